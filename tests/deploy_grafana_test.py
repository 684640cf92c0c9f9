"""deploy/grafana: the dashboard JSON parses, every panel queries Prometheus,
every query is valid PromQL (promtool check rules, with Grafana's variables
replaced by values) over series attnserve exports, and the panels the issue
asks for are there.
"""
import os
import re
import sys
import tempfile
import unittest

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploy_util as util  # noqa: E402
import promql  # noqa: E402

DASHBOARD = os.path.join(util.DEPLOY, "grafana", "attnserve-dashboard.json")

# Grafana's built-in variables and what they stand for when checked.
BUILTINS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}


def substitute(expr, variables):
    """`expr` with $name and ${name} replaced: built-ins by a duration, the
    dashboard's variables by a regex matching anything."""
    def value(m):
        name = m.group(1) or m.group(2)
        if name in BUILTINS:
            return BUILTINS[name]
        if name not in variables:
            raise AssertionError(f"{expr!r} uses ${name}, which the dashboard does not define")
        return ".*"
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def check_rules(promtool, exprs):
    """`promtool check rules` on a file recording each of `exprs`."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump(rules, f)
        f.flush()
        return util.run([promtool, "check", "rules", f.name], timeout=60)


class DashboardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dashboard = util.load_json(DASHBOARD)
        cls.variables = {v["name"] for v in cls.dashboard["templating"]["list"]}
        cls.panels = [p for p in cls.dashboard["panels"] if p["type"] != "row"]
        cls.exprs = [(p["title"], t["expr"]) for p in cls.panels for t in p["targets"]]

    def test_dashboard_shape(self):
        d = self.dashboard
        self.assertEqual((d["uid"], d["title"]), ("attnserve", "attnserve"))
        self.assertEqual(self.variables, {"datasource", "namespace", "model"})
        ids = [p["id"] for p in d["panels"]]
        self.assertEqual(len(ids), len(set(ids)), "panel ids must be unique")
        for p in d["panels"]:
            grid = p["gridPos"]
            self.assertLessEqual(grid["x"] + grid["w"], 24, p["title"])
        for v in d["templating"]["list"]:
            if v["type"] == "query":  # label_values(SERIES{...}, LABEL)
                series = re.match(r"label_values\((\w+)", v["definition"]).group(1)
                self.assertIn(series, util.server_series(), v["name"])

    def test_every_panel_has_a_prometheus_query(self):
        self.assertGreaterEqual(len(self.panels), 10)
        for p in self.panels:
            self.assertTrue(p["targets"], p["title"])
            self.assertEqual(p["datasource"], {"type": "prometheus", "uid": "${datasource}"})
            ref_ids = [t["refId"] for t in p["targets"]]
            self.assertEqual(len(ref_ids), len(set(ref_ids)), p["title"])
            for t in p["targets"]:
                self.assertTrue(t["expr"].strip(), p["title"])

    def test_exprs_are_valid_promql(self):
        """promtool parses each query as a recording rule's expression, and the
        same check rejects a broken one (so it is really checking)."""
        promtool = util.promtool()
        if not promtool:
            self.fail("promtool not found: `make deps` installs it (package prometheus)")
        queries = [substitute(e, self.variables) for _, e in self.exprs]
        code, out = check_rules(promtool, queries)
        self.assertEqual(code, 0, out)
        self.assertIn(f"SUCCESS: {len(queries)} rules found", out)
        code, out = check_rules(promtool, ["sum(rate(attnserve_tokens_total[1m])"])
        self.assertNotEqual(code, 0, out)

    def test_exprs_use_only_server_series(self):
        used = set()
        for title, expr in self.exprs:
            names = promql.metric_names(expr)
            self.assertTrue(names, title)
            self.assertLessEqual(names, util.server_series(), title)
            used |= names
            for quantile in re.finditer(r"histogram_quantile\(([^,]+),", expr):
                self.assertTrue(0 < float(quantile.group(1)) < 1, title)
                self.assertRegex(expr, r"by \([^)]*\ble\b[^)]*\)", f"{title}: group by le")
        # Request rate by code, latency quantiles, queue and compute time, batch
        # size and tokens per batch, queue depth, CPU and memory.
        wanted = {"attnserve_requests_total", "attnserve_request_duration_seconds_bucket",
                  "attnserve_queue_duration_seconds_bucket",
                  "attnserve_compute_duration_seconds_bucket", "attnserve_batch_size_sum",
                  "attnserve_batch_tokens_sum", "attnserve_queue_depth",
                  "process_cpu_seconds_total", "process_resident_memory_bytes"}
        self.assertLessEqual(wanted, used)

    def test_latency_panel_shows_p50_p95_p99(self):
        (panel,) = [p for p in self.panels if "p50 / p95 / p99" in p["title"]]
        quantiles = sorted(float(re.search(r"histogram_quantile\(([\d.]+)", t["expr"]).group(1))
                           for t in panel["targets"])
        self.assertEqual(quantiles, [0.5, 0.95, 0.99])
        for t in panel["targets"]:
            self.assertIn("attnserve_request_duration_seconds_bucket", t["expr"])

    def test_rate_by_code_groups_by_code(self):
        (panel,) = [p for p in self.panels if p["title"] == "Request rate by code"]
        (target,) = panel["targets"]
        self.assertRegex(target["expr"], r"sum by \(code\) \(rate\(attnserve_requests_total")


if __name__ == "__main__":
    unittest.main(verbosity=2)
