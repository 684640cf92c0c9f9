"""deploy/ghz/v2: the KServe v2 ghz scenario. Its config uses only ghz's
documented keys (the list of deploy_ghz_test.py) and calls the unary
ModelInfer of proto/inference/v2/open_inference.proto through reflection; its
data file is what make_data.py writes, byte for byte; and every request of it,
read from the protobuf JSON mapping as ghz reads it, is answered OK by the real
attnserve binary on the demo model with the outputs the mapping promises.

ctest sets ATTNSERVE_BINARY.
"""
import filecmp
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploy_ghz_test as ghz_test  # noqa: E402
import deploy_util as util  # noqa: E402

HERE = os.path.join(util.DEPLOY, "ghz", "v2")
PROTO = os.path.join(util.REPO, "proto", "inference", "v2", "open_inference.proto")
BINARY = os.environ.get("ATTNSERVE_BINARY", "")


class GhzV2Test(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.config = util.load_json(os.path.join(HERE, "infer.json"))
        cls.data = util.load_json(os.path.join(HERE, "data", "infer.json"))

    def test_config_uses_only_documented_keys_and_types(self):
        kinds = {k: kind for kind, keys in ghz_test.GHZ_KEYS.items() for k in keys}
        for key, value in self.config.items():
            self.assertIn(key, kinds, f"{key} is not a ghz config key")
            if kinds[key] == "duration":
                self.assertRegex(value, ghz_test.GO_DURATION, key)
            elif kinds[key] == "uint":
                self.assertTrue(isinstance(value, int) and value >= 0, key)
            elif kinds[key] == "bool":
                self.assertIsInstance(value, bool, key)
            elif kinds[key] == "string":
                self.assertIsInstance(value, str, key)
        self.assertEqual(self.config["format"], "json")
        self.assertIs(self.config["insecure"], True)
        self.assertEqual(self.config["data-file"], "data/infer.json")
        self.assertIn(self.config.get("duration-stop"), ("wait", "ignore"))
        self.assertLessEqual(self.config["connections"], self.config["concurrency"])
        self.assertNotIn("proto", self.config, "reflection by default")

    def test_call_is_the_unary_model_infer(self):
        with open(PROTO) as f:
            text = re.sub(r"//[^\n]*", "", f.read())
        self.assertRegex(text, r"package inference;")
        m = re.fullmatch(r"([\w.]+)\.(\w+)[./](\w+)", self.config["call"])
        self.assertEqual(m.groups(), ("inference", "GRPCInferenceService", "ModelInfer"))
        self.assertRegex(text, r"rpc ModelInfer\(ModelInferRequest\) returns \(ModelInferResponse\)")

    def test_data_is_written_by_make_data(self):
        with tempfile.TemporaryDirectory() as tmp:
            code, out = util.run([sys.executable, os.path.join(HERE, "make_data.py"), "--out", tmp])
            self.assertEqual(code, 0, out)
            self.assertTrue(filecmp.cmp(os.path.join(tmp, "infer.json"),
                                        os.path.join(HERE, "data", "infer.json"), shallow=False))

    @unittest.skipUnless(BINARY, "ATTNSERVE_BINARY not set (ctest sets it)")
    def test_every_request_is_answered_by_the_real_server(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNSERVE_")}
        proc = subprocess.Popen(
            [BINARY, "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
             "--model-repository", os.path.join(util.REPO, "models")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            lines, port = [], None
            for line in proc.stdout:
                lines.append(line)
                m = re.search(r"serving gRPC on 127\.0\.0\.1:(\d+)", line)
                if m:
                    port = int(m.group(1))
                    break
            self.assertIsNotNone(port, "".join(lines))
            with tempfile.TemporaryDirectory() as tmp:
                code, out = util.run(["protoc", "-I", os.path.join(util.REPO, "proto"),
                                      "--python_out", tmp, "--grpc_out", tmp,
                                      "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin", PROTO])
                self.assertEqual(code, 0, out)
                data_path = os.path.join(HERE, "data", "infer.json")
                script = f"""
import json, grpc
from google.protobuf import json_format
from inference.v2 import open_inference_pb2 as pb, open_inference_pb2_grpc as g
stub = g.GRPCInferenceServiceStub(grpc.insecure_channel("127.0.0.1:{port}"))
for item in json.load(open({data_path!r})):
    reply = stub.ModelInfer(json_format.ParseDict(item, pb.ModelInferRequest()), timeout=30)
    print(json.dumps({{"id": reply.id, "outputs": [[t.name, list(t.shape)] for t in reply.outputs],
                       "sizes": [len(r) for r in reply.raw_output_contents]}}))
"""
                code, out = util.run(["/usr/bin/python3", "-c", script],
                                     env={**env, "PYTHONPATH": tmp, "PYTHONDONTWRITEBYTECODE": "1"})
                self.assertEqual(code, 0, out)
            replies = [json.loads(l) for l in out.splitlines()]
            self.assertEqual([r["id"] for r in replies], [d["id"] for d in self.data])
            self.assertEqual(replies[0]["outputs"], [["output", [16, 256]]])
            self.assertEqual(replies[2]["outputs"], [["output", [16, 256]], ["attention", [16, 16]]])
            self.assertEqual(replies[4]["outputs"], [["output", [2, 1, 256]]])
            for r in replies:
                for (_, shape), size in zip(r["outputs"], r["sizes"]):
                    n = 4
                    for d in shape:
                        n *= d
                    self.assertEqual(size, n)
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
            self.assertEqual(proc.returncode, 0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
