"""The ghz data files against the real server: each request parses as an
attnserve.v1.AttendRequest with protobuf's own JSON parser (what ghz does with
the file), and attnserve on the embedded demo model answers it OK with the
expected output and weights shapes.

The message classes come from protoc's descriptor set of the repository's
.proto (no generated code); calls go over grpcio's generic stubs to attnserve
on a free loopback port, started from ATTNSERVE_BINARY (set by ctest).
"""
import os
import socket
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploy_util as util  # noqa: E402

import grpc  # noqa: E402  (python3-grpcio)
from google.protobuf import descriptor_pb2, descriptor_pool, json_format  # noqa: E402
from google.protobuf import message_factory  # noqa: E402

BINARY = os.environ.get("ATTNSERVE_BINARY", "")
GHZ = os.path.join(util.DEPLOY, "ghz")


def message_classes():
    """AttendRequest and AttendResponse built from attention.proto via protoc."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "attention.pb")
        code, text = util.run(["protoc", "-I", os.path.join(util.REPO, "proto"),
                               "--descriptor_set_out=" + out,
                               "attnserve/v1/attention.proto"], timeout=60)
        assert code == 0, text
        files = descriptor_pb2.FileDescriptorSet()
        with open(out, "rb") as f:
            files.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for file_proto in files.file:
        pool.Add(file_proto)
    get = lambda name: message_factory.MessageFactory(pool).GetPrototype(  # noqa: E731
        pool.FindMessageTypeByName(name))
    return get("attnserve.v1.AttendRequest"), get("attnserve.v1.AttendResponse")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@unittest.skipUnless(BINARY, "ATTNSERVE_BINARY not set (ctest sets it)")
class GhzDataAgainstServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.Request, cls.Response = message_classes()
        cls.tmp = tempfile.TemporaryDirectory()
        code, out = util.run([sys.executable, os.path.join(GHZ, "make_data.py"),
                              "--out", cls.tmp.name], timeout=300)
        assert code == 0, out
        cls.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNSERVE_")}
        cls.server = subprocess.Popen(
            [BINARY, "--port", str(cls.port), "--metrics-port", "0", "--threads", "2",
             "--model-repository", os.path.join(util.REPO, "models")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cls.channel = grpc.insecure_channel(f"127.0.0.1:{cls.port}")
        try:
            grpc.channel_ready_future(cls.channel).result(timeout=60)
        except grpc.FutureTimeoutError:
            cls.tearDownClass()
            raise
        cls.attend = cls.channel.unary_unary(
            "/attnserve.v1.Attention/Attend",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=cls.Response.FromString)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.server.terminate()
        try:
            cls.server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            cls.server.kill()
            cls.server.wait()
        cls.tmp.cleanup()

    def check_scenario(self, name):
        with open(os.path.join(self.tmp.name, name + ".json")) as f:
            text = f.read()
        requests = util.load_json(os.path.join(self.tmp.name, name + ".json"))
        self.assertGreater(len(requests), 1)
        heads = util.demo_model_config()["num_heads"]
        for i, fields in enumerate(requests):
            where = f"{name}[{i}]"
            request = json_format.ParseDict(fields, self.Request())  # raises on bad JSON
            reply = self.attend(request, timeout=60)
            rows, cols = request.input.rows, request.input.cols
            pooled = request.pooling != 0
            self.assertEqual((reply.output.rows, reply.output.cols),
                             (1 if pooled else rows, cols), where)
            self.assertEqual(len(reply.output.data), reply.output.rows * cols, where)
            expected_weights = {0: 0, 1: heads, 2: 1}[request.weights]
            self.assertEqual(len(reply.attention), expected_weights, where)
            for matrix in reply.attention:
                self.assertEqual((matrix.rows, matrix.cols), (rows, rows), where)
            self.assertEqual(reply.model, "demo", where)
        self.assertTrue(text.startswith("[\n{"), "one request per line")

    def test_small(self):
        self.check_scenario("small")

    def test_medium(self):
        self.check_scenario("medium")

    def test_long(self):
        self.check_scenario("long")


if __name__ == "__main__":
    unittest.main(verbosity=2)
