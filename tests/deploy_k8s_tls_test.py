"""deploy/k8s/overlays/tls: the overlay renders with `kubectl kustomize` into
the base's objects plus the Certificate, the token Secret and the policy
ConfigMap, every object strictly valid; the Deployment mounts them read-only
where the flags point, the probes reach a port the container declares and the
server serves plaintext health on; and the attnserve binary, started with the
overlay's flags (paths moved to a temp dir holding certificates made by
tests/make_test_certs.sh), serves TLS with tokens and the policy while the
probe port answers health in plaintext.

Uses $KUBECTL, else `kubectl` on PATH (as deploy_kustomize_test.py). The
current kustomize warns on stderr that `bases` and the `patches*` fields are
deprecated (kubectl 1.20's kustomize needs them): only stdout is parsed.
"""
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploy_util as util  # noqa: E402
import k8s_strict  # noqa: E402

K8S = os.path.join(util.DEPLOY, "k8s")
OVERLAY = os.path.join(K8S, "overlays", "tls")
KUBECTL = os.environ.get("KUBECTL") or shutil.which("kubectl")
BINARY = os.environ.get("ATTNSERVE_BINARY", "")
ATTNCTL = os.environ.get("ATTNCTL_BINARY", "")


def render(directory):
    """The objects `kubectl kustomize directory` prints, and its stderr."""
    env = dict(os.environ, KUBECONFIG=os.devnull)  # no cluster is asked
    proc = subprocess.run([KUBECTL, "kustomize", directory], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=120, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} exited {proc.returncode}:\n"
                             f"{proc.stderr}")
    return util.load_yaml_text(proc.stdout), proc.stderr


def key(doc):
    return doc["kind"], doc["metadata"]["name"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TlsOverlayTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        (cls.kustomization,) = util.load_yaml_documents(os.path.join(OVERLAY,
                                                                     "kustomization.yaml"))
        cls.rendered, cls.stderr = render(OVERLAY)
        cls.base, _ = render(os.path.join(K8S, "base"))
        cls.by_key = {key(d): d for d in cls.rendered}
        cls.deployment = cls.by_key[("Deployment", "attnserve")]
        cls.pod = cls.deployment["spec"]["template"]["spec"]
        (cls.container,) = cls.pod["containers"]
        cls.flags = cls.by_key[("ConfigMap", "attnserve-flags")]["data"]

    def container_port(self, name):
        ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        self.assertIn(name, ports, f"the container has no port named {name!r}")
        return ports[name]

    def test_renders_the_base_plus_certificate_secret_and_policy(self):
        self.assertEqual(k8s_strict.check_overlay_kustomization(self.kustomization), [])
        for line in self.stderr.splitlines():
            self.assertTrue(line.startswith("# Warning: '") and "deprecated" in line, line)
        added = {("Certificate", "attnserve-tls"), ("Secret", "attnserve-auth-tokens"),
                 ("ConfigMap", "attnserve-authz-policy")}
        self.assertEqual(len(self.rendered), len(self.by_key), "a name is used twice")
        self.assertEqual(set(self.by_key), {key(d) for d in self.base} | added)
        for doc in self.rendered:
            self.assertEqual(k8s_strict.check_object(doc, "/".join(key(doc))), [])
        # The same image as `kubectl apply -k deploy/k8s`.
        (top,) = util.load_yaml_documents(os.path.join(K8S, "kustomization.yaml"))
        self.assertEqual(self.kustomization["images"], top["images"])
        (image,) = top["images"]
        self.assertEqual(self.container["image"], f"{image['newName']}:{image['newTag']}")

    def test_probes_use_the_plaintext_health_port_the_container_declares(self):
        health = self.container_port("health")
        self.assertEqual(int(self.flags["ATTNSERVE_HEALTH_PORT"]), health)
        self.assertNotEqual(health, self.container_port("grpc"))
        self.assertEqual(int(self.flags["ATTNSERVE_PORT"]), self.container_port("grpc"))
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = self.container[kind]
            self.assertEqual(set(probe) & {"httpGet", "tcpSocket", "exec"}, set(), kind)
            self.assertEqual(probe["grpc"]["port"], health, kind)
            self.assertEqual(probe["grpc"].get("service", ""), "", kind)
        # The Services still expose only gRPC and metrics (probes go to the pod).
        for doc in self.rendered:
            if doc["kind"] == "Service":
                for port in doc["spec"]["ports"]:
                    self.assertNotEqual(port["targetPort"], "health")

    def test_secrets_and_policy_are_mounted_read_only_where_the_flags_point(self):
        volumes = {v["name"]: v for v in self.pod["volumes"]}
        mounts = {m["name"]: m for m in self.container["volumeMounts"]}
        source_of = {}  # mount path -> (kind, name)
        for name, volume in volumes.items():
            if "secret" in volume or "configMap" in volume:
                mount = mounts[name]
                self.assertIs(mount.get("readOnly"), True, name)
                # subPath mounts are never updated: rotation would not reach them.
                self.assertNotIn("subPath", mount, name)
                source = volume.get("secret") or volume.get("configMap")
                self.assertEqual(source["defaultMode"], 0o440, name)
                kind = "Secret" if "secret" in volume else "ConfigMap"
                source_of[mount["mountPath"]] = (
                    kind, source.get("secretName") or source.get("name"))
        # 0440 files are readable through the group the server runs as.
        security = self.pod["securityContext"]
        self.assertEqual(security["fsGroup"], security["runAsGroup"])

        certificate = self.by_key[("Certificate", "attnserve-tls")]
        files = {}  # mounted file path -> where its content comes from
        for path, (kind, name) in source_of.items():
            if (kind, name) == ("Secret", certificate["spec"]["secretName"]):
                keys = ["tls.crt", "tls.key", "ca.crt"]  # what cert-manager writes
            else:
                keys = list(self.by_key[(kind, name)]["data"])
            for k in keys:
                files[f"{path}/{k}"] = (kind, name, k)
        for flag in ("ATTNSERVE_TLS_CERT", "ATTNSERVE_TLS_KEY", "ATTNSERVE_AUTH_TOKENS",
                     "ATTNSERVE_AUTHZ_POLICY"):
            self.assertIn(self.flags[flag], files, flag)
        self.assertEqual(files[self.flags["ATTNSERVE_TLS_CERT"]][2], "tls.crt")
        self.assertEqual(files[self.flags["ATTNSERVE_TLS_KEY"]][2], "tls.key")
        self.assertEqual(files[self.flags["ATTNSERVE_AUTH_TOKENS"]][0], "Secret")
        self.assertEqual(self.flags["ATTNSERVE_REFLECTION"], "false")

    def test_certificate_names_the_headless_service(self):
        spec = self.by_key[("Certificate", "attnserve-tls")]["spec"]
        self.assertIn("server auth", spec["usages"])
        self.assertEqual(spec["privateKey"]["rotationPolicy"], "Always")
        service = self.by_key[("Service", "attnserve")]
        self.assertEqual(service["spec"]["clusterIP"], "None")
        self.assertIn("attnserve", spec["dnsNames"])
        self.assertIn("attnserve.attnserve.svc.cluster.local", spec["dnsNames"])
        self.assertLess(int(spec["renewBefore"].rstrip("h")), int(spec["duration"].rstrip("h")))

    def test_token_file_and_policy_are_well_formed(self):
        secret = self.by_key[("Secret", "attnserve-auth-tokens")]
        text = base64.b64decode(secret["data"]["tokens"]).decode()
        for line in text.splitlines():
            if line.strip() and not line.startswith("#"):
                principal, digest = line.split()
                self.assertRegex(digest, r"^[0-9a-f]{64}$", principal)
        policy = json.loads(self.by_key[("ConfigMap", "attnserve-authz-policy")]["data"]
                            ["policy.json"])
        self.assertEqual(set(policy) - {"name", "allow_rules", "deny_rules"}, set())
        for rule in policy["allow_rules"] + policy.get("deny_rules", []):
            self.assertEqual(set(rule) - {"name", "source", "request"}, set(), rule)
            for path in rule.get("request", {}).get("paths", []):
                self.assertRegex(path, r"^/attnserve\.v1\.Attention/(Attend|AttendStream|"
                                       r"Session|ListModels)$")

    @unittest.skipUnless(BINARY, "ATTNSERVE_BINARY not set (ctest sets it)")
    def test_overlay_flags_are_server_flags(self):
        known = util.flag_env_names_from_help(BINARY)
        self.assertEqual(set(self.flags) - known, set(), "not attnserve flags")

    @unittest.skipUnless(BINARY and ATTNCTL, "ATTNSERVE_BINARY/ATTNCTL_BINARY not set")
    def test_overlay_flags_serve_tls_tokens_and_plaintext_health(self):
        """The server started with the overlay's ConfigMap as its environment:
        probes (plaintext health port) see SERVING, a TLS client with a token
        made by `attnctl token` is served, one without is UNAUTHENTICATED, and
        SIGTERM still exits 0."""
        with tempfile.TemporaryDirectory() as tmp:
            code, out = util.run(["/bin/sh", os.path.join(util.REPO, "tests",
                                                          "make_test_certs.sh"), tmp],
                                 timeout=120)
            self.assertEqual(code, 0, out)
            moved = {}  # the mounted paths, moved into tmp
            for path in ("/etc/attnserve/tls", "/etc/attnserve/auth", "/etc/attnserve/policy"):
                moved[path] = os.path.join(tmp, os.path.basename(path))
                os.makedirs(moved[path])
            shutil.copy(os.path.join(tmp, "server.pem"), moved["/etc/attnserve/tls"] + "/tls.crt")
            shutil.copy(os.path.join(tmp, "server.key"), moved["/etc/attnserve/tls"] + "/tls.key")
            tokens = moved["/etc/attnserve/auth"] + "/tokens"
            shutil.copy(os.path.join(OVERLAY, "auth-tokens"), tokens)
            shutil.copy(os.path.join(OVERLAY, "authz-policy.json"),
                        moved["/etc/attnserve/policy"] + "/policy.json")
            proc = subprocess.run([ATTNCTL, "token", "--principal", "svc-a", "--file", tokens],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  timeout=30)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            token = proc.stdout.strip()

            env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("ATTNSERVE_", "ATTNCTL_"))}
            base_flags = util.configmap_flags()
            env.update(base_flags)
            for name, value in self.flags.items():
                for path, new in moved.items():
                    value = value.replace(path, new)
                env[name] = value
            self.assertEqual(set(self.flags) - set(base_flags),
                             {"ATTNSERVE_TLS_CERT", "ATTNSERVE_TLS_KEY", "ATTNSERVE_TLS_REFRESH_S",
                              "ATTNSERVE_AUTH_TOKENS", "ATTNSERVE_AUTHZ_POLICY",
                              "ATTNSERVE_HEALTH_PORT", "ATTNSERVE_REFLECTION"})
            health_port = free_port()
            env.update(ATTNSERVE_MODEL_REPOSITORY=os.path.join(util.REPO, "models"),
                       ATTNSERVE_HEALTH_PORT=str(health_port), ATTNSERVE_LOG_FORMAT="text")
            self.serve_and_call(env, health_port, os.path.join(tmp, "ca.pem"), token)

    def serve_and_call(self, env, health_port, ca, token):
        proc = subprocess.Popen([BINARY, "--host", "127.0.0.1", "--port", "0",
                                 "--metrics-port", "0"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        lines = []
        try:
            deadline = time.monotonic() + 60
            port = None
            for line in proc.stdout:
                lines.append(line)
                if "serving gRPC on 127.0.0.1:" in line:
                    port = int(line.split("serving gRPC on 127.0.0.1:")[1].split()[0]
                               .rstrip(","))
                    break
                if time.monotonic() > deadline:
                    break
            self.assertIsNotNone(port, "".join(lines))

            def attnctl(*args, token_env=None):
                e = {k: v for k, v in os.environ.items() if not k.startswith("ATTNCTL_")}
                if token_env:
                    e["ATTNCTL_TOKEN"] = token_env
                return util.run([ATTNCTL, *args], timeout=60, env=e)

            # What the kubelet's probe does: plaintext Health/Check, no token.
            code, out = attnctl("health", "--target", f"127.0.0.1:{health_port}")
            self.assertEqual((code, out.strip()), (0, "SERVING"), out)
            tls = ["--target", f"127.0.0.1:{port}", "--tls-ca", ca, "--retries", "0"]
            code, out = attnctl("models", *tls, token_env=token)
            self.assertEqual(code, 0, out)
            self.assertIn('"demo"', out)
            code, out = attnctl("infer", "--random", "4", *tls, token_env=token)
            self.assertEqual(code, 0, out)
            code, out = attnctl("models", *tls)
            self.assertEqual(code, 1, out)
            self.assertIn("UNAUTHENTICATED", out)
            code, out = attnctl("models", "--target", f"127.0.0.1:{port}", "--retries", "0")
            self.assertEqual(code, 1, out)  # plaintext on the TLS port
            proc.send_signal(signal.SIGTERM)
            rest, _ = proc.communicate(timeout=30)
            self.assertEqual(proc.returncode, 0, "".join(lines) + rest)
            self.assertNotIn(token, "".join(lines) + rest)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    if not KUBECTL:
        print("FAILED: no kubectl (Debian package kubernetes-client; `make deps` installs it)")
        sys.exit(1)
    unittest.main(verbosity=2)
