"""deploy/ghz: each config uses only ghz's documented keys with the right
types and calls a real unary method of the proto; the data files are
AttendRequest arrays in the protobuf JSON mapping that fit the demo model and
the scenario; make_data.py writes them byte for byte; run.sh drives ghz as
documented (checked with a stand-in ghz that records its arguments).
"""
import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploy_util as util  # noqa: E402

GHZ = os.path.join(util.DEPLOY, "ghz")
PROTO = os.path.join(util.REPO, "proto", "attnserve", "v1", "attention.proto")
SCENARIOS = {"small": 16, "medium": 128, "long": 1024}  # name -> nominal L
# ghz's own default limit on a received message (gRPC-Go's 4 MiB); a larger
# reply would need --max-recv-message-size on every run.
GHZ_MAX_RECV_BYTES = 4 * 1024 * 1024

# The config-file keys ghz documents (ghz.sh "Options Reference" and
# "Configuration Files": the JSON names of runner.Config), by JSON type.
GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
GHZ_KEYS = {
    "string": {"proto", "protoset", "call", "cacert", "cert", "key", "cname", "authority",
               "load-schedule", "concurrency-schedule", "duration-stop", "data-file",
               "binary-file", "metadata-file", "output", "format", "name", "debug", "host"},
    "bool": {"skipTLS", "insecure", "async", "enable-compression"},
    "uint": {"total", "concurrency", "connections", "rps", "skipFirst", "load-start",
             "load-end", "concurrency-start", "concurrency-end", "cpus"},
    "int": {"load-step", "concurrency-step"},
    "duration": {"timeout", "duration", "max-duration", "stream-interval", "connect-timeout",
                 "keepalive", "load-step-duration", "load-max-duration",
                 "concurrency-step-duration", "concurrency-max-duration"},
    "string-map": {"metadata", "tags", "reflect-metadata"},
    "string-list": {"import-paths"},
    "data": {"data"},
}
GHZ_FORMATS = {"summary", "csv", "json", "pretty", "html", "influx-summary", "influx-details",
               "prometheus"}


def proto_schema():
    """From attention.proto: {message: {field: (type, repeated)}}, {enum: {names}},
    and {rpc name: (client streaming, server streaming)} of service Attention."""
    with open(PROTO) as f:
        text = re.sub(r"//[^\n]*", "", f.read())
    messages = {}
    for name, body in re.findall(r"message (\w+) \{([^}]*)\}", text):
        messages[name] = {f: (t, bool(rep)) for rep, t, f in
                          re.findall(r"(repeated )?(\w+) (\w+) = \d+;", body)}
    enums = {name: set(re.findall(r"(\w+) = \d+;", body))
             for name, body in re.findall(r"enum (\w+) \{([^}]*)\}", text)}
    service = re.search(r"service Attention \{(.*?)\n\}", text, re.S).group(1)
    rpcs = {n: (bool(cs), bool(ss)) for n, cs, ss in
            re.findall(r"rpc (\w+)\((stream )?\w+\) returns \((stream )?\w+\)", service)}
    package = re.search(r"^package ([\w.]+);", text, re.M).group(1)
    return package, messages, enums, rpcs


PACKAGE, MESSAGES, ENUMS, RPCS = proto_schema()
SCALARS = {"string": str, "bool": bool, "uint32": int, "float": (int, float)}


def check_message(value, message, path, errors):
    """Appends to `errors` where `value` is not `message` in protobuf JSON
    (field names as in the .proto, enums by name, numbers as numbers)."""
    if not isinstance(value, dict):
        errors.append(f"{path}: expected a {message} object")
        return
    fields = MESSAGES[message]
    for key, v in value.items():
        if key not in fields:
            errors.append(f"{path}: {message} has no field {key!r}")
            continue
        ftype, repeated = fields[key]
        for i, item in enumerate(v if repeated and isinstance(v, list) else [v]):
            where = f"{path}.{key}" + (f"[{i}]" if repeated else "")
            if repeated and not isinstance(v, list):
                errors.append(f"{where}: expected a list")
            elif ftype in MESSAGES:
                check_message(item, ftype, where, errors)
            elif ftype in ENUMS:
                if item not in ENUMS[ftype]:
                    errors.append(f"{where}: {item!r} is not a {ftype}")
            elif isinstance(item, bool) != (ftype == "bool") or \
                    not isinstance(item, SCALARS[ftype]) or \
                    (ftype == "uint32" and item < 0):
                errors.append(f"{where}: {item!r} is not a {ftype}")


def configs():
    return {f[:-5]: util.load_json(os.path.join(GHZ, f))
            for f in sorted(os.listdir(GHZ)) if f.endswith(".json")}


class GhzConfigTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        code, out = util.run([sys.executable, os.path.join(GHZ, "make_data.py"),
                              "--out", cls.tmp.name], timeout=300)
        assert code == 0, out
        cls.data = {s: util.load_json(os.path.join(cls.tmp.name, s + ".json"))
                    for s in SCENARIOS}
        cls.configs = configs()
        cls.demo = util.demo_model_config()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_one_config_per_scenario(self):
        self.assertEqual(set(self.configs), set(SCENARIOS))
        self.assertEqual(set(MESSAGES["AttendRequest"]),
                         {"model", "request_id", "input", "mask", "weights", "pooling"})

    def test_configs_use_only_documented_keys_and_types(self):
        kinds = {k: kind for kind, keys in GHZ_KEYS.items() for k in keys}
        for name, config in self.configs.items():
            for key, value in config.items():
                where = f"{name}.json: {key}"
                self.assertIn(key, kinds, f"{where} is not a ghz config key")
                kind = kinds[key]
                if kind == "string":
                    self.assertIsInstance(value, str, where)
                elif kind == "bool":
                    self.assertIsInstance(value, bool, where)
                elif kind in ("uint", "int"):
                    self.assertTrue(isinstance(value, int) and not isinstance(value, bool), where)
                    self.assertTrue(kind == "int" or value >= 0, where)
                elif kind == "duration":
                    self.assertRegex(value, GO_DURATION, where)
                elif kind == "string-map":
                    self.assertTrue(all(isinstance(v, str) for v in value.values()), where)
            self.assertIn(config.get("format", "summary"), GHZ_FORMATS)
            self.assertEqual(config["format"], "json", "run.sh and report.py read JSON")
            self.assertIs(config["insecure"], True, "attnserve serves plaintext gRPC")
            # Either a request count or a duration (which makes ghz ignore total).
            self.assertEqual(len({"total", "duration"} & config.keys()), 1, name)
            if "total" in config:
                self.assertGreaterEqual(config["total"], config["concurrency"])
            else:  # "close" would report the calls cut at the end as errors
                self.assertIn(config.get("duration-stop"), ("wait", "ignore"), name)
            self.assertLessEqual(config["connections"], config["concurrency"])
            self.assertEqual(config["tags"]["scenario"], name)
            self.assertEqual(config["tags"]["L"], str(SCENARIOS[name]))

    def test_call_is_a_unary_method_of_the_proto(self):
        for name, config in self.configs.items():
            m = re.fullmatch(r"([\w.]+)\.(\w+)[./](\w+)", config["call"])
            self.assertIsNotNone(m, config["call"])
            self.assertEqual((m.group(1), m.group(2)), (PACKAGE, "Attention"))
            self.assertIn(m.group(3), RPCS)
            # ghz round-robins a data array only over unary calls.
            self.assertEqual(RPCS[m.group(3)], (False, False), f"{name}: not unary")
            self.assertNotIn("proto", config, "reflection by default; run.sh --proto adds it")

    def test_data_files_are_written_by_make_data(self):
        committed = sorted(f for f in os.listdir(os.path.join(GHZ, "data"))
                           if f.endswith(".json") and f != "long.json")
        self.assertEqual(committed, ["medium.json", "small.json"])
        for f in committed:
            self.assertTrue(filecmp.cmp(os.path.join(GHZ, "data", f),
                                        os.path.join(self.tmp.name, f), shallow=False),
                            f"data/{f} differs from make_data.py's output")
        for name, config in self.configs.items():
            self.assertEqual(config["data-file"], f"data/{name}.json")
        total = sum(os.path.getsize(os.path.join(GHZ, "data", f)) for f in committed)
        self.assertLess(total, 2.5e6)

    def test_data_are_attend_requests_for_the_demo_model(self):
        d_model, max_length = self.demo["d_model"], self.demo["max_length"]
        for name, requests in self.data.items():
            self.assertIsInstance(requests, list, name)
            self.assertGreater(len(requests), 1, f"{name}: an array, for round-robin")
            for i, r in enumerate(requests):
                where = f"{name}[{i}]"
                errors = []
                check_message(r, "AttendRequest", where, errors)
                self.assertEqual(errors, [])
                self.assertTrue(os.path.isfile(os.path.join(util.REPO, "models", r["model"],
                                                            "config.json")), where)
                rows, cols, data = r["input"]["rows"], r["input"]["cols"], r["input"]["data"]
                self.assertEqual(cols, d_model, where)
                self.assertEqual(len(data), rows * cols, where)
                self.assertTrue(1 <= rows <= max_length, where)
                self.assertTrue(all(-1 <= x <= 1 for x in data), where)
                edges = r.get("mask", {}).get("edges", [])
                self.assertEqual(len(edges) % 2, 0, where)
                self.assertTrue(all(e < rows for e in edges), where)
                self.assertLess(reply_bytes(r, self.demo["num_heads"]), GHZ_MAX_RECV_BYTES,
                                f"{where}: reply over ghz's receive limit")

    def test_lengths_and_modes_fit_each_scenario(self):
        for name, requests in self.data.items():
            lengths = [r["input"]["rows"] for r in requests]
            self.assertEqual(sum(lengths) / len(lengths), SCENARIOS[name], name)
            self.assertGreater(len(set(lengths)), 1, f"{name}: mixed lengths")
            self.assertTrue(all(SCENARIOS[name] / 2 <= n <= SCENARIOS[name] * 2
                                for n in lengths), name)
        medium = self.data["medium"]
        self.assertGreaterEqual(len({json.dumps(r.get("mask")) for r in medium}), 4)
        self.assertEqual({r.get("weights", "WEIGHTS_NONE") for r in medium}, ENUMS["WeightsMode"])
        self.assertEqual({r.get("pooling", "POOLING_NONE") for r in medium}, ENUMS["Pooling"])
        for name in ("small", "long"):  # weights off
            self.assertEqual({r.get("weights", "WEIGHTS_NONE") for r in self.data[name]},
                             {"WEIGHTS_NONE"}, name)


def reply_bytes(request, num_heads):
    """Upper bound of the AttendResponse's size: its float payloads."""
    rows = request["input"]["rows"]
    out_rows = 1 if request.get("pooling", "POOLING_NONE") != "POOLING_NONE" else rows
    weights = {"WEIGHTS_NONE": 0, "WEIGHTS_MEAN": 1,
               "WEIGHTS_PER_HEAD": num_heads}[request.get("weights", "WEIGHTS_NONE")]
    return 4 * (out_rows * request["input"]["cols"] + weights * rows * rows) + 4096


FAKE_GHZ = r"""#!/bin/sh
# Stands in for ghz: records its arguments and writes a report where --output says.
echo "$@" >> "$FAKE_GHZ_LOG"
out=
while [ $# -gt 0 ]; do
  case $1 in --output) out=$2; shift ;; esac
  shift
done
cat > "$out" <<'JSON'
{"name": "fake", "date": "2024-01-01T00:00:00Z", "count": 1000, "total": 2000000000,
 "average": 3000000, "fastest": 1000000, "slowest": 9000000, "rps": 500.0,
 "errorDistribution": {"rpc error: code = Unavailable desc = draining": 10},
 "statusCodeDistribution": {"OK": 990, "Unavailable": 10},
 "latencyDistribution": [{"percentage": 50, "latency": 2500000},
   {"percentage": 95, "latency": 6000000}, {"percentage": 99, "latency": 8000000}],
 "histogram": [], "details": []}
JSON
"""


class RunScriptTest(unittest.TestCase):
    """run.sh against a stand-in ghz, on a copy of deploy/ghz (it writes the
    missing data file and the reports)."""

    def run_script(self, *args):
        with tempfile.TemporaryDirectory() as tmp:
            def generated(directory, names):  # as in a fresh checkout
                return {"reports"} | ({"long.json"} if directory.endswith("data") else set())
            shutil.copytree(GHZ, os.path.join(tmp, "deploy", "ghz"), ignore=generated)
            os.symlink(os.path.join(util.REPO, "proto"), os.path.join(tmp, "proto"))
            fake = os.path.join(tmp, "fake-ghz")
            with open(fake, "w") as f:
                f.write(FAKE_GHZ)
            os.chmod(fake, 0o755)
            log = os.path.join(tmp, "ghz.log")
            env = dict(os.environ, GHZ=fake, FAKE_GHZ_LOG=log, PYTHON=sys.executable)
            proc = subprocess.run(["sh", os.path.join(tmp, "deploy", "ghz", "run.sh"), *args,
                                   "--out", os.path.join(tmp, "out")],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=300)
            self.assertEqual(proc.returncode, 0, proc.stdout)
            with open(log) as f:
                calls = [line.split() for line in f]
            reports = sorted(os.listdir(os.path.join(tmp, "out")))
            long_written = os.path.isfile(os.path.join(tmp, "deploy", "ghz", "data", "long.json"))
            if "--proto" in args:  # the path ghz gets, relative to deploy/ghz
                i = calls[0].index("--proto")
                self.assertTrue(os.path.isfile(os.path.join(tmp, "deploy", "ghz",
                                                            calls[0][i + 1])))
            return proc.stdout, calls, reports, long_written

    def test_runs_every_scenario_and_summarizes(self):
        out, calls, reports, long_written = self.run_script("127.0.0.1:50051")
        self.assertEqual([c[c.index("--config") + 1] for c in calls],
                         ["small.json", "medium.json", "long.json"])
        self.assertIn("== long: attnserve long: L=1024", out)
        for c in calls:
            self.assertEqual(c[-1], "127.0.0.1:50051")
            self.assertEqual(c[c.index("--format") + 1], "json")
            self.assertNotIn("--proto", c)
        self.assertEqual(reports, ["long.json", "medium.json", "small.json"])
        self.assertTrue(long_written, "run.sh writes the missing data file")
        self.assertEqual(out.count("| 1000 | 990 | 500.0 | 3.00 | 2.50 | 6.00 | 8.00 |"), 3, out)
        self.assertIn("OK:990 Unavailable:10", out)

    def test_one_scenario_with_the_proto(self):
        _, calls, reports, long_written = self.run_script("--proto", "small")
        self.assertEqual(len(calls), 1)
        self.assertEqual(calls[0][-1], "localhost:50051")
        self.assertIn("--import-paths", calls[0])
        self.assertEqual(reports, ["small.json"])
        self.assertFalse(long_written)


if __name__ == "__main__":
    unittest.main(verbosity=2)
