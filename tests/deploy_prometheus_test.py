"""deploy/prometheus: the scrape configs pass `promtool check config`, the
alert rules `promtool check rules`, and `promtool test rules` proves each alert
fires on its condition and stays quiet otherwise. The alerts use only series
attnserve exports, and their thresholds agree with the Kubernetes ConfigMap.
"""
import os
import re
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploy_util as util  # noqa: E402
import promql  # noqa: E402

PROM = os.path.join(util.DEPLOY, "prometheus")
ALERTS = os.path.join(PROM, "alerts.yml")
ALERTS_TEST = os.path.join(PROM, "alerts_test.yml")
PROMTOOL = util.promtool()


def alert_rules():
    (doc,) = util.load_yaml_documents(ALERTS)
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


class PrometheusTest(unittest.TestCase):
    def setUp(self):
        self.assertTrue(PROMTOOL, "promtool not found: `make deps` installs it (package prometheus)")

    def promtool(self, *args, cwd=PROM):
        return util.run([PROMTOOL, *args], timeout=120, cwd=cwd)

    def test_scrape_configs_pass_promtool(self):
        configs = sorted(f for f in os.listdir(PROM) if f.startswith("prometheus"))
        self.assertEqual(configs, ["prometheus-local.yml", "prometheus.yml"])
        for config in configs:
            code, out = self.promtool("check", "config", config)
            self.assertEqual(code, 0, out)
            self.assertIn("SUCCESS: 1 rule files found", out)

    def test_rules_pass_promtool(self):
        code, out = self.promtool("check", "rules", "alerts.yml")
        self.assertEqual(code, 0, out)
        self.assertEqual({r["alert"] for r in alert_rules()},
                         {"AttnserveHighErrorRatio", "AttnserveQueueSaturated",
                          "AttnserveHighP99Latency"})

    def test_rule_unit_tests_pass(self):
        code, out = self.promtool("test", "rules", "alerts_test.yml")
        self.assertEqual(code, 0, out)

    def test_each_alert_has_a_firing_and_a_quiet_case(self):
        (doc,) = util.load_yaml_documents(ALERTS_TEST)
        fires, quiet = set(), set()
        for test in doc["tests"]:
            for case in test["alert_rule_test"]:
                (fires if case["exp_alerts"] else quiet).add(case["alertname"])
        names = {r["alert"] for r in alert_rules()}
        self.assertEqual(fires, names)
        self.assertEqual(quiet, names)

    def test_unit_tests_catch_a_changed_threshold(self):
        """The unit tests have teeth: with any one threshold moved, they fail."""
        with open(ALERTS) as f:
            original = f.read()
        edits = [("> 0.05", "> 0.5"), ("> 0.8 * 256", "> 0.99 * 256"), ("> 0.5\n", "> 2\n")]
        for old, new in edits:
            self.assertEqual(original.count(old), 1, old)
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copy(ALERTS_TEST, tmp)
                with open(os.path.join(tmp, "alerts.yml"), "w") as f:
                    f.write(original.replace(old, new))
                code, out = self.promtool("test", "rules", "alerts_test.yml", cwd=tmp)
                self.assertNotEqual(code, 0, f"{old} -> {new} went unnoticed:\n{out}")

    def test_alerts_use_only_server_series(self):
        for rule in alert_rules():
            names = promql.metric_names(rule["expr"])
            self.assertTrue(names, rule["alert"])
            self.assertLessEqual(names, util.server_series(), rule["alert"])

    def test_queue_alert_matches_the_configmap_queue_size(self):
        (rule,) = [r for r in alert_rules() if r["alert"] == "AttnserveQueueSaturated"]
        size = re.search(r"> 0\.8 \* (\d+)", rule["expr"]).group(1)
        self.assertEqual(size, util.configmap_flags()["ATTNSERVE_MAX_QUEUE_SIZE"])


class SeriesListTest(unittest.TestCase):
    def test_series_list_matches_the_server(self):
        """deploy_util's list of exported families is the one in server/metrics.cc."""
        families = set(util.COUNTERS) | set(util.GAUGES) | set(util.HISTOGRAMS)
        self.assertEqual(families, util.metric_names_declared_by_server())


if __name__ == "__main__":
    unittest.main(verbosity=2)
