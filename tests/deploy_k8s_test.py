"""deploy/k8s: every manifest strictly valid, and the cross-checks that keep
the manifests consistent with each other and with the server.

ATTNSERVE_BINARY (set by ctest) names the attnserve binary: its --help gives
the real flag list, and it is started once with the ConfigMap's environment.
"""
import copy
import os
import re
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploy_util as util  # noqa: E402
import k8s_strict  # noqa: E402

K8S = os.path.join(util.DEPLOY, "k8s")
BINARY = os.environ.get("ATTNSERVE_BINARY", "")
# After the drain, the server gives idle streams this long before it exits
# (server/server.cc, AttnServer::Drain).
SHUTDOWN_GRACE_S = 0.5


def load_manifests():
    """{kind: [documents]} over the kustomization's resources, and the
    kustomization itself."""
    (kustomization,) = util.load_yaml_documents(os.path.join(K8S, "kustomization.yaml"))
    by_kind = {}
    for resource in kustomization["resources"]:
        for doc in util.load_yaml_documents(os.path.join(K8S, resource)):
            by_kind.setdefault(doc["kind"], []).append(doc)
    return kustomization, by_kind


def matches(selector, labels):
    """True when a matchLabels selector (or a Service's selector map) selects
    `labels`."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


class ManifestTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.kustomization, cls.by_kind = load_manifests()
        (cls.deployment,) = cls.by_kind["Deployment"]
        (cls.configmap,) = cls.by_kind["ConfigMap"]
        (cls.hpa,) = cls.by_kind["HorizontalPodAutoscaler"]
        (cls.pdb,) = cls.by_kind["PodDisruptionBudget"]
        (cls.monitor,) = cls.by_kind["ServiceMonitor"]
        cls.services = {s["metadata"]["name"]: s for s in cls.by_kind["Service"]}
        cls.pod = cls.deployment["spec"]["template"]
        (cls.container,) = cls.pod["spec"]["containers"]
        cls.flags = cls.configmap["data"]

    def container_port(self, name):
        ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        self.assertIn(name, ports, f"the container has no port named {name!r}")
        return ports[name]

    # --- Each document against the object model. -------------------------
    def test_kustomization_lists_every_manifest(self):
        self.assertEqual(k8s_strict.check_kustomization(self.kustomization), [])
        listed = set(self.kustomization["resources"])
        base = os.path.join(K8S, "base")
        present = {"base/" + f for f in os.listdir(base) if f.endswith(".yaml")}
        present -= {"base/kustomization.yaml"}
        self.assertEqual(listed, present, "resources and the files in deploy/k8s/base differ")
        # base/kustomization.yaml (what overlays build on) lists the same files.
        (base_kustomization,) = util.load_yaml_documents(os.path.join(base, "kustomization.yaml"))
        self.assertEqual(k8s_strict.check_kustomization(base_kustomization), [])
        self.assertEqual(["base/" + r for r in base_kustomization["resources"]],
                         self.kustomization["resources"])

    def test_every_document_is_a_valid_object(self):
        count = 0
        for resource in self.kustomization["resources"]:
            for i, doc in enumerate(util.load_yaml_documents(os.path.join(K8S, resource))):
                self.assertEqual(k8s_strict.check_object(doc, f"{resource}[{i}]"), [])
                count += 1
        self.assertEqual(count, 7)
        self.assertEqual(set(self.by_kind), {"ConfigMap", "Deployment", "Service",
                                             "HorizontalPodAutoscaler", "PodDisruptionBudget",
                                             "ServiceMonitor"})

    def test_checker_rejects_unknown_fields_and_wrong_types(self):
        """The checker can fail: each broken copy yields exactly its error."""
        def broken(edit):
            doc = copy.deepcopy(self.deployment)
            edit(doc["spec"]["template"]["spec"])
            return k8s_strict.check_object(doc, "d")

        cases = {
            "unknown field 'imagePullPolicyy'":
                lambda p: p["containers"][0].update(imagePullPolicyy="Always"),
            "containerPort: expected int, got str":
                lambda p: p["containers"][0]["ports"][0].update(containerPort="50051"),
            "grpc: unknown field 'portt'":
                lambda p: p["containers"][0]["readinessProbe"]["grpc"].update(portt=1),
            "grpc: missing required field 'port'":
                lambda p: p["containers"][0]["livenessProbe"]["grpc"].pop("port"),
            "enableServiceLinks: expected bool, got str":
                lambda p: p.update(enableServiceLinks="false"),
            "expected a list, got dict":
                lambda p: p.update(topologySpreadConstraints={"maxSkew": 1}),
            "must not be `None`":
                lambda p: p["containers"][0].pop("name"),
        }
        for expected, edit in cases.items():
            errors = broken(edit)
            self.assertEqual(len(errors), 1, f"{expected}: {errors}")
            self.assertIn(expected, errors[0])
        monitor = copy.deepcopy(self.monitor)
        monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
        monitor["spec"]["endpoints"][0]["portName"] = "metrics"
        self.assertEqual(len(k8s_strict.check_object(monitor)), 2)
        configmap = copy.deepcopy(self.configmap)
        configmap["data"]["ATTNSERVE_PORT"] = 50051  # unquoted in YAML
        self.assertEqual(len(k8s_strict.check_object(configmap)), 1)

    def test_commented_queue_depth_variant_is_valid(self):
        with open(os.path.join(K8S, "base", "hpa.yaml")) as f:
            text = f.read()
        block = re.search(r"# BEGIN queue-depth variant\n(.*?)\n\s*# END queue-depth variant",
                          text, re.S)
        self.assertIsNotNone(block, "hpa.yaml lost its commented queue-depth variant")
        uncommented = "\n".join(re.sub(r"^\s*# ?", "", line)
                                for line in block.group(1).splitlines())
        (metrics,) = util.load_yaml_text(uncommented)
        self.assertEqual(k8s_strict.check_model(metrics, "list[V2beta2MetricSpec]",
                                                "variant"), [])
        self.assertEqual(metrics[0]["pods"]["metric"]["name"], "attnserve_queue_depth")
        self.assertIn("attnserve_queue_depth", util.server_series())

    # --- Cross-checks. ----------------------------------------------------
    def test_container_ports_match_flags_and_services(self):
        self.assertEqual(self.container_port("grpc"), int(self.flags["ATTNSERVE_PORT"]))
        self.assertEqual(self.container_port("metrics"),
                         int(self.flags["ATTNSERVE_METRICS_PORT"]))
        grpc = self.services["attnserve"]["spec"]
        self.assertEqual(grpc.get("clusterIP"), "None", "the gRPC Service must be headless")
        self.assertEqual([(p["name"], p["targetPort"]) for p in grpc["ports"]],
                         [("grpc", "grpc")])
        metrics = self.services["attnserve-metrics"]["spec"]
        self.assertEqual(metrics.get("type", "ClusterIP"), "ClusterIP")
        self.assertNotIn("clusterIP", metrics)
        self.assertEqual([(p["name"], p["targetPort"]) for p in metrics["ports"]],
                         [("metrics", "metrics")])
        for service in self.services.values():
            for port in service["spec"]["ports"]:
                self.container_port(port["targetPort"])  # names a container port

    def test_probes_use_the_grpc_health_service(self):
        services = {""} | util.model_names()  # "" = the whole server
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = self.container[kind]
            self.assertEqual(set(probe) & {"httpGet", "tcpSocket", "exec"}, set(), kind)
            self.assertEqual(probe["grpc"]["port"], self.container_port("grpc"), kind)
            self.assertIn(probe["grpc"].get("service", ""), services, kind)

    def test_termination_outlasts_prestop_and_drain(self):
        command = self.container["lifecycle"]["preStop"]["exec"]["command"]
        self.assertEqual(command[0], "/bin/sleep")
        pre_stop_s = float(command[1])
        drain_s = int(self.flags["ATTNSERVE_DRAIN_TIMEOUT_MS"]) / 1000
        grace_s = self.pod["spec"]["terminationGracePeriodSeconds"]
        self.assertGreater(grace_s, pre_stop_s + drain_s + SHUTDOWN_GRACE_S)
        # A draining pod reports NOT_SERVING; liveness must not kill it meanwhile.
        live = self.container["livenessProbe"]
        self.assertGreater(live["periodSeconds"] * live["failureThreshold"], drain_s)
        self.assertGreater(int(self.flags["ATTNSERVE_MAX_CONNECTION_AGE_MS"]), 0,
                           "clients must rebalance after a scale-out")

    def test_configmap_keys_are_server_flags(self):
        self.assertEqual([e["configMapRef"]["name"] for e in self.container["envFrom"]],
                         [self.configmap["metadata"]["name"]])
        known = util.flag_env_names_from_source()
        self.assertIn("ATTNSERVE_DRAIN_TIMEOUT_MS", known)
        if BINARY:
            self.assertEqual(util.flag_env_names_from_help(BINARY), known)
        self.assertEqual(set(self.flags) - known, set(), "not attnserve flags")
        cpu_limit = float(self.container["resources"]["limits"]["cpu"])
        self.assertTrue(1 <= int(self.flags["ATTNSERVE_THREADS"]) <= cpu_limit,
                        "engine threads should match the CPU limit")

    @unittest.skipUnless(BINARY, "ATTNSERVE_BINARY not set (ctest sets it)")
    def test_configmap_flags_start_the_server(self):
        """attnserve accepts every value: started with the ConfigMap as its
        environment (the model repository pointed at the source tree, ports
        free), it serves, then drains on SIGTERM and exits 0."""
        self.assertTrue(os.path.isfile(BINARY), f"{BINARY} not built")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNSERVE_")}
        env.update(self.flags)
        env["ATTNSERVE_MODEL_REPOSITORY"] = os.path.join(util.REPO, "models")
        proc = subprocess.Popen([BINARY, "--port", "0", "--metrics-port", "0"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        deadline = time.monotonic() + 60
        try:
            for line in proc.stdout:
                lines.append(line)
                if "serving gRPC on" in line or time.monotonic() > deadline:
                    break
            self.assertTrue(any("serving gRPC on" in l for l in lines), "".join(lines))
            self.assertTrue(any('"level"' in l for l in lines), "ATTNSERVE_LOG_FORMAT=json")
            self.assertTrue(any("max_queue_size=" + self.flags["ATTNSERVE_MAX_QUEUE_SIZE"] in l
                                for l in lines), "".join(lines))
            proc.send_signal(signal.SIGTERM)
            rest, _ = proc.communicate(timeout=30)
            self.assertEqual(proc.returncode, 0, "".join(lines) + rest)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def test_labels_and_selectors_agree(self):
        pod_labels = self.pod["metadata"]["labels"]
        self.assertTrue(matches(self.deployment["spec"]["selector"]["matchLabels"], pod_labels))
        for service in self.services.values():
            self.assertTrue(matches(service["spec"]["selector"], pod_labels),
                            service["metadata"]["name"])
        self.assertTrue(matches(self.pdb["spec"]["selector"]["matchLabels"], pod_labels))
        for constraint in self.pod["spec"]["topologySpreadConstraints"]:
            self.assertTrue(matches(constraint["labelSelector"]["matchLabels"], pod_labels))
        # The ServiceMonitor selects the metrics Service only (not the headless
        # one: each pod would be scraped twice), on a port that Service names.
        monitored = [name for name, s in self.services.items()
                     if matches(self.monitor["spec"]["selector"]["matchLabels"],
                                s["metadata"]["labels"])]
        self.assertEqual(monitored, ["attnserve-metrics"])
        port_names = {p["name"] for p in self.services["attnserve-metrics"]["spec"]["ports"]}
        for endpoint in self.monitor["spec"]["endpoints"]:
            self.assertIn(endpoint["port"], port_names)
            self.assertEqual(endpoint.get("path", "/metrics"), "/metrics")

    def test_hpa_targets_the_deployment(self):
        spec = self.hpa["spec"]
        self.assertEqual(spec["scaleTargetRef"], {"apiVersion": "apps/v1", "kind": "Deployment",
                                                  "name": self.deployment["metadata"]["name"]})
        self.assertNotIn("replicas", self.deployment["spec"], "the HPA owns the replica count")
        self.assertLessEqual(spec["minReplicas"], spec["maxReplicas"])
        # One pod may be disrupted voluntarily; at least one keeps serving.
        self.assertGreater(spec["minReplicas"], self.pdb["spec"]["maxUnavailable"])
        for metric in spec["metrics"]:
            if metric["type"] == "Resource":  # utilization is relative to requests
                self.assertIn(metric["resource"]["name"],
                              self.container["resources"]["requests"])

    def test_pod_runs_unprivileged(self):
        pod = self.pod["spec"]
        self.assertIs(pod["securityContext"]["runAsNonRoot"], True)
        with open(os.path.join(util.REPO, "Dockerfile")) as f:
            uid, gid = re.search(r"^USER (\d+):(\d+)", f.read(), re.M).groups()
        self.assertEqual(pod["securityContext"]["runAsUser"], int(uid))
        self.assertEqual(pod["securityContext"]["runAsGroup"], int(gid))
        sc = self.container["securityContext"]
        self.assertIs(sc["readOnlyRootFilesystem"], True)
        self.assertIs(sc["allowPrivilegeEscalation"], False)
        self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
        # Service links would set e.g. ATTNSERVE_METRICS_PORT=tcp://...:9090 from
        # the Service attnserve-metrics, which the server reads as a flag.
        self.assertIs(pod["enableServiceLinks"], False)
        for resources in ("requests", "limits"):
            self.assertEqual(set(self.container["resources"][resources]), {"cpu", "memory"})

    def test_image_placeholder_is_rewritten_by_kustomize(self):
        (image,) = self.kustomization["images"]
        self.assertEqual(image["name"], self.container["image"])
        # The names `make image` produces: attnserve:VERSION (and :latest).
        self.assertEqual(self.container["image"], "attnserve")
        self.assertEqual(image["newName"].rsplit("/", 1)[-1], "attnserve")
        with open(os.path.join(util.REPO, "CMakeLists.txt")) as f:
            version = re.search(r"project\(attnserve VERSION ([0-9.]+)", f.read()).group(1)
        self.assertEqual(image["newTag"], version)


if __name__ == "__main__":
    unittest.main(verbosity=2)
