"""deploy/kserve: the ServingRuntime and InferenceService strictly valid
against the fields of KServe's CRDs (serving.kserve.io; the CRDs are not
installable here, so their schemas are written out below, limited to the
fields we use or might, with their types and enums; the container is checked
against python3-kubernetes' V1Container), and the cross-checks: the runtime
speaks grpc-v2 on a port named h2c that is the server's --port, reads
/mnt/models, the InferenceService selects that runtime, format and protocol,
and the binary starts with the runtime's args (the repository pointed at the
source tree, ports free) and answers KServe v2 ServerReady.

ATTNSERVE_BINARY (set by ctest) names the attnserve binary.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploy_util as util  # noqa: E402
import k8s_strict  # noqa: E402
from k8s_strict import BOOL, INT32, arr, model, obj, string  # noqa: E402

KSERVE = os.path.join(util.DEPLOY, "kserve")
BINARY = os.environ.get("ATTNSERVE_BINARY", "")
STRING_MAP = {"type": "string-map"}
PROTOCOLS = ["v1", "v2", "grpc-v1", "grpc-v2"]

# serving.kserve.io/v1alpha1 ServingRuntime (ServingRuntimeSpec).
MODEL_FORMAT = obj({"name": string(), "version": string(), "autoSelect": BOOL,
                    "priority": INT32}, required=["name"])
SERVING_RUNTIME = obj({
    "apiVersion": string(enum=["serving.kserve.io/v1alpha1"]),
    "kind": string(enum=["ServingRuntime", "ClusterServingRuntime"]),
    "metadata": model("V1ObjectMeta"),
    "spec": obj({
        "supportedModelFormats": arr(MODEL_FORMAT, min_items=1),
        "protocolVersions": arr(string(enum=PROTOCOLS), min_items=1),
        "multiModel": BOOL,
        "disabled": BOOL,
        "grpcEndpoint": string(), "grpcDataEndpoint": string(), "httpDataEndpoint": string(),
        "replicas": INT32,
        "storageHelper": obj({"disabled": BOOL}),
        "containers": arr(model("V1Container"), min_items=1),
        "volumes": arr(model("V1Volume")),
        "nodeSelector": STRING_MAP,
        "affinity": model("V1Affinity"),
        "tolerations": arr(model("V1Toleration")),
        "imagePullSecrets": arr(model("V1LocalObjectReference")),
        "labels": STRING_MAP, "annotations": STRING_MAP,
    }, required=["containers"]),
}, required=["apiVersion", "kind", "metadata", "spec"])

# serving.kserve.io/v1beta1 InferenceService, the predictor's model form.
MODEL_SPEC = obj({
    "modelFormat": obj({"name": string(), "version": string()}, required=["name"]),
    "runtime": string(),
    "protocolVersion": string(enum=PROTOCOLS),
    "storageUri": string(pattern=r"^(gs|s3|pvc|https?|hdfs|webhdfs|oci)://"),
    "args": arr(string()), "env": arr(model("V1EnvVar")),
    "resources": model("V1ResourceRequirements"),
}, required=["modelFormat"])
INFERENCE_SERVICE = obj({
    "apiVersion": string(enum=["serving.kserve.io/v1beta1"]),
    "kind": string(enum=["InferenceService"]),
    "metadata": model("V1ObjectMeta"),
    "spec": obj({
        "predictor": obj({
            "model": MODEL_SPEC,
            "minReplicas": INT32, "maxReplicas": INT32,
            "scaleMetric": string(enum=["cpu", "memory", "concurrency", "rps"]),
            "scaleTarget": INT32,
            "containerConcurrency": INT32, "timeout": INT32,
            "canaryTrafficPercent": INT32,
            "serviceAccountName": string(),
            "nodeSelector": STRING_MAP,
            "tolerations": arr(model("V1Toleration")),
        }, required=["model"]),
    }, required=["predictor"]),
}, required=["apiVersion", "kind", "metadata", "spec"])


def check(doc, schema, path):
    checker = k8s_strict.Checker()
    checker.schema(doc, schema, path)
    if not (doc.get("metadata") or {}).get("name"):
        checker.errors.append(f"{path}: metadata.name is required")
    return checker.errors


def flag_value(args, name):
    """The value of --NAME in `args` (--NAME=V or --NAME V); None if absent."""
    for i, a in enumerate(args):
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
        if a == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
    return None


class KServeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        (cls.kustomization,) = util.load_yaml_documents(os.path.join(KSERVE, "kustomization.yaml"))
        (cls.runtime,) = util.load_yaml_documents(os.path.join(KSERVE, "servingruntime.yaml"))
        (cls.isvc,) = util.load_yaml_documents(os.path.join(KSERVE, "inferenceservice.yaml"))
        (cls.container,) = cls.runtime["spec"]["containers"]

    def test_kustomization_lists_both(self):
        self.assertEqual(k8s_strict.check_kustomization(self.kustomization), [])
        present = {f for f in os.listdir(KSERVE) if f.endswith(".yaml")} - {"kustomization.yaml"}
        self.assertEqual(set(self.kustomization["resources"]), present)

    def test_documents_are_valid(self):
        self.assertEqual(check(self.runtime, SERVING_RUNTIME, "servingruntime.yaml"), [])
        self.assertEqual(check(self.isvc, INFERENCE_SERVICE, "inferenceservice.yaml"), [])

    def test_checker_rejects_unknown_fields_and_wrong_types(self):
        import copy
        broken = copy.deepcopy(self.runtime)
        broken["spec"]["protocolVersion"] = ["grpc-v2"]  # the field is protocolVersions
        self.assertTrue(check(broken, SERVING_RUNTIME, "x"))
        broken = copy.deepcopy(self.runtime)
        broken["spec"]["protocolVersions"] = ["grpc-v3"]
        self.assertTrue(check(broken, SERVING_RUNTIME, "x"))
        broken = copy.deepcopy(self.runtime)
        broken["spec"]["containers"][0]["ports"][0]["containerPort"] = "50051"
        self.assertTrue(check(broken, SERVING_RUNTIME, "x"))
        broken = copy.deepcopy(self.isvc)
        broken["spec"]["predictor"]["model"]["modelformat"] = {"name": "attnserve"}
        self.assertTrue(check(broken, INFERENCE_SERVICE, "x"))

    def test_runtime_speaks_grpc_v2_on_h2c_and_reads_mnt_models(self):
        self.assertEqual(self.runtime["spec"]["protocolVersions"], ["grpc-v2"])
        (port,) = self.container["ports"]  # Knative allows one
        self.assertEqual(port["name"], "h2c")
        args = self.container["args"]
        self.assertEqual(int(flag_value(args, "port")), port["containerPort"])
        self.assertEqual(flag_value(args, "model-repository"), "/mnt/models")
        ann = self.runtime["metadata"]["annotations"]
        self.assertEqual(int(ann["prometheus.kserve.io/port"]), int(flag_value(args, "metrics-port")))
        # The drain ends well before Knative's default 30 s grace period.
        self.assertLessEqual(int(flag_value(args, "drain-timeout-ms")), 20000)

    def test_inference_service_selects_the_runtime(self):
        m = self.isvc["spec"]["predictor"]["model"]
        self.assertEqual(m["runtime"], self.runtime["metadata"]["name"])
        formats = {(f["name"], f.get("version")) for f in self.runtime["spec"]["supportedModelFormats"]}
        self.assertIn((m["modelFormat"]["name"], m["modelFormat"].get("version")), formats)
        self.assertIn(m["protocolVersion"], self.runtime["spec"]["protocolVersions"])

    @unittest.skipUnless(BINARY, "ATTNSERVE_BINARY not set (ctest sets it)")
    def test_runtime_args_start_a_v2_server(self):
        """The runtime's args (repository and ports swapped for the test's)
        start the binary, which answers KServe v2 ServerReady."""
        args = [a for a in self.container["args"]
                if not re.match(r"--(model-repository|port|metrics-port)=", a)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNSERVE_")}
        proc = subprocess.Popen(
            [BINARY, *args, "--model-repository", os.path.join(util.REPO, "models"),
             "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        try:
            deadline = time.monotonic() + 60
            port = None
            for line in proc.stdout:
                lines.append(line)
                m = re.search(r"serving gRPC on 127\.0\.0\.1:(\d+)", line)
                if m or time.monotonic() > deadline:
                    port = m and int(m.group(1))
                    break
            self.assertIsNotNone(port, "".join(lines))
            with tempfile.TemporaryDirectory() as tmp:
                code, out = util.run(["protoc", "-I", os.path.join(util.REPO, "proto"), "--python_out",
                                tmp, "--grpc_out", tmp,
                                "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
                                os.path.join(util.REPO, "proto", "inference", "v2",
                                             "open_inference.proto")])
                self.assertEqual(code, 0, out)
                script = ("import grpc\n"
                          "from inference.v2 import open_inference_pb2 as pb\n"
                          "from inference.v2 import open_inference_pb2_grpc as g\n"
                          f"s = g.GRPCInferenceServiceStub(grpc.insecure_channel('127.0.0.1:{port}'))\n"
                          "print(s.ServerReady(pb.ServerReadyRequest(), timeout=10).ready)\n")
                code, out = util.run(["/usr/bin/python3", "-c", script],
                                     env={**env, "PYTHONPATH": tmp, "PYTHONDONTWRITEBYTECODE": "1"})
                self.assertEqual(code, 0, out)
                self.assertEqual(out.strip(), "True")
            proc.send_signal(signal.SIGTERM)
            rest, _ = proc.communicate(timeout=30)
            self.assertEqual(proc.returncode, 0, "".join(lines) + rest)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
