"""The README's Python example (section "From Python"), run as written with
Debian's python3-grpcio against the real attnserve binary on 127.0.0.1 with
TLS (certificates made by tests/make_test_certs.sh) and bearer tokens (the
token made by `attnctl token`): it prints the reply's shape, and with a wrong
token it fails with UNAUTHENTICATED.

ctest sets ATTNSERVE_BINARY and ATTNCTL_BINARY; protoc (protobuf-compiler)
generates attention_pb2.py into a temporary directory, as the README says.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.environ.get("ATTNSERVE_BINARY", "")
ATTNCTL = os.environ.get("ATTNCTL_BINARY", "")


def readme_python_example():
    """The first ```python block after the heading "### From Python"."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    section = text[text.index("### From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run(args, **kwargs):
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=120, **kwargs)


class ReadmePythonTest(unittest.TestCase):
    def test_example_calls_a_tls_server_with_a_token(self):
        self.assertTrue(BINARY and ATTNCTL, "ctest sets ATTNSERVE_BINARY and ATTNCTL_BINARY")
        example = readme_python_example()
        self.assertIn("grpc.ssl_channel_credentials", example)
        self.assertIn("grpc.access_token_call_credentials", example)
        with tempfile.TemporaryDirectory() as tmp:
            proc = run(["protoc", "-I", os.path.join(REPO, "proto"), "--python_out", tmp,
                        os.path.join(REPO, "proto", "attnserve", "v1", "attention.proto")])
            self.assertEqual(proc.returncode, 0, proc.stderr)
            certs = os.path.join(tmp, "certs")
            proc = run(["/bin/sh", os.path.join(REPO, "tests", "make_test_certs.sh"), certs])
            self.assertEqual(proc.returncode, 0, proc.stderr)
            shutil.copy(os.path.join(certs, "ca.pem"), os.path.join(tmp, "ca.pem"))
            tokens = os.path.join(tmp, "tokens")
            proc = run([ATTNCTL, "token", "--principal", "python", "--file", tokens])
            self.assertEqual(proc.returncode, 0, proc.stderr)
            token = proc.stdout.strip()

            env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNSERVE_")}
            server = subprocess.Popen(
                [BINARY, "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
                 "--model-repository", os.path.join(REPO, "models"),
                 "--tls-cert", os.path.join(certs, "server.pem"),
                 "--tls-key", os.path.join(certs, "server.key"), "--auth-tokens", tokens],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                self.call_it(server, example, tmp, token)
            finally:
                if server.poll() is None:
                    server.kill()
                    server.wait()

    def call_it(self, server, example, tmp, token):
        lines = []
        port = None
        for line in server.stdout:  # ends if the server exits
            lines.append(line)
            m = re.search(r"serving gRPC on 127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        self.assertIsNotNone(port, "".join(lines))

        def example_with(secret):
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("ATTNSERVE_", "ATTNCTL_"))}
            env.update(ATTNSERVE_TARGET=f"localhost:{port}", ATTNCTL_TOKEN=secret,
                       PYTHONPATH=tmp, PYTHONDONTWRITEBYTECODE="1")
            return run(["/usr/bin/python3", "-c", example], cwd=tmp, env=env)

        proc = example_with(token)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        rows, cols, batch = proc.stdout.split()
        self.assertEqual((rows, cols), ("2", "256"))
        self.assertGreaterEqual(int(batch), 1)
        proc = example_with(token[:-1] + ("A" if token[-1] != "A" else "B"))
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("UNAUTHENTICATED", proc.stderr)
        self.assertNotIn(token, proc.stderr + proc.stdout)
        server.send_signal(signal.SIGTERM)
        rest, _ = server.communicate(timeout=30)
        self.assertEqual(server.returncode, 0, "".join(lines) + rest)
        self.assertNotIn(token, "".join(lines) + rest)


if __name__ == "__main__":
    unittest.main(verbosity=2)
