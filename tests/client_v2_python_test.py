"""The Python KServe v2 example (examples/kserve_v2/client.py) with Debian's
python3-grpcio against the real attnserve binary on 127.0.0.1: stubs are
generated from proto/inference/v2/open_inference.proto at test time (protoc
with Debian's grpc_python_plugin); every golden case of tests/golden/data
(PyTorch's numbers, which the reference engine matches to 1e-5) is sent
through the example's request builder as raw FP32 and as FP32 contents, and
the outputs and attention weights must match to a relative L2 of 1e-5. The
example's command line runs too, and an unknown model is NOT_FOUND.

ctest sets ATTNSERVE_BINARY.
"""
import importlib.util
import json
import math
import os
import re
import struct
import subprocess
import sys
import tempfile
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.environ.get("ATTNSERVE_BINARY", "")
GOLDEN = os.path.join(REPO, "tests", "golden", "data")
EXAMPLE = os.path.join(REPO, "examples", "kserve_v2", "client.py")
MODELS = ["mha_plain", "rotary_manual", "mha_sinusoidal_sep"]


def read_safetensors(path):
    """{name: (shape, flat floats)} of an F32 safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + size])
    data = blob[8 + size:]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", name
        a, b = t["data_offsets"]
        out[name] = (t["shape"], list(struct.unpack("<%df" % ((b - a) // 4), data[a:b])))
    return out


def relative_l2(got, want):
    if len(got) != len(want):
        return math.inf
    num = sum((g - w) ** 2 for g, w in zip(got, want))
    den = sum(w * w for w in want)
    return math.sqrt(num) / max(math.sqrt(den), 1e-30)


class PythonV2ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        assert BINARY, "ctest sets ATTNSERVE_BINARY"
        cls.tmp = tempfile.TemporaryDirectory()
        proc = subprocess.run(
            ["protoc", "-I", os.path.join(REPO, "proto"), "--python_out", cls.tmp.name,
             "--grpc_out", cls.tmp.name, "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
             os.path.join(REPO, "proto", "inference", "v2", "open_inference.proto")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        sys.path.insert(0, cls.tmp.name)
        spec = importlib.util.spec_from_file_location("kserve_v2_client", EXAMPLE)
        cls.example = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cls.example)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNSERVE_")}
        cls.server = subprocess.Popen(
            [BINARY, "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
             "--model-repository", GOLDEN, "--default-model", "mha_plain"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        cls.port = None
        for line in cls.server.stdout:  # ends if the server exits
            lines.append(line)
            m = re.search(r"serving gRPC on 127\.0\.0\.1:(\d+)", line)
            if m:
                cls.port = int(m.group(1))
                break
        if cls.port is None:
            cls.server.kill()
            raise AssertionError("".join(lines))
        import grpc
        cls.grpc = grpc
        cls.channel = grpc.insecure_channel("127.0.0.1:%d" % cls.port)
        cls.stub = cls.example.pb_grpc.GRPCInferenceServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.server.terminate()
        cls.server.communicate(timeout=30)
        cls.tmp.cleanup()

    def test_every_golden_case_raw_and_contents(self):
        checked = 0
        for model in MODELS:
            with open(os.path.join(GOLDEN, model, "cases.json")) as f:
                cases = json.load(f)["cases"]
            tensors = read_safetensors(os.path.join(GOLDEN, model, "cases.safetensors"))
            for case in cases:
                shape, values = tensors[case["input"]]
                params = {"causal": case["mask"]["causal"], "window": case["mask"]["window"],
                          "weights": case["weights"], "pooling": case["pooling"]}
                for raw in (True, False):
                    with self.subTest(model=model, case=case["name"], raw=raw):
                        request = self.example.make_request(
                            model, values, shape, "FP32", params=params,
                            edges=case["mask"]["edges"], raw=raw, request_id=case["name"])
                        reply = self.stub.ModelInfer(request, timeout=30)
                        self.assertEqual(reply.id, case["name"])
                        outputs = self.example.outputs_of(reply)
                        want_shape, want = tensors[case["output"]]
                        got_shape, got = outputs["output"]
                        self.assertEqual(got_shape, want_shape)
                        self.assertLessEqual(relative_l2(got, want), 1e-5)
                        if case["attention"] is None:
                            self.assertNotIn("attention", outputs)
                        else:
                            _, want_att = tensors[case["attention"]]
                            self.assertLessEqual(relative_l2(outputs["attention"][1], want_att),
                                                 1e-5)
                        self.assertGreaterEqual(reply.parameters["batch_size"].int64_param, 1)
                        checked += 1
        self.assertGreater(checked, 60)

    def test_unknown_model_is_not_found(self):
        request = self.example.make_request("nope", [0.0] * 32, [1, 32])
        with self.assertRaises(self.grpc.RpcError) as e:
            self.stub.ModelInfer(request, timeout=30)
        self.assertEqual(e.exception.code(), self.grpc.StatusCode.NOT_FOUND)

    def test_the_example_runs_as_written(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNSERVE_")}
        env.update(PYTHONPATH=self.tmp.name, PYTHONDONTWRITEBYTECODE="1")
        proc = subprocess.run(
            ["/usr/bin/python3", EXAMPLE, "--target", "127.0.0.1:%d" % self.port, "--model",
             "mha_plain", "--rows", "3", "--datatype", "BF16", "--causal", "--weights", "mean"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("live: True", proc.stdout)
        self.assertIn("output [3, 32]", proc.stdout)
        self.assertIn("attention [3, 3]", proc.stdout)
        self.assertRegex(proc.stdout, r"'batch_size': [1-9]")


if __name__ == "__main__":
    unittest.main(verbosity=2)
