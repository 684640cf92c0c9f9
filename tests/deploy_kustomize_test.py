"""deploy/k8s renders with `kubectl kustomize` (offline: it reads only the
directory) into exactly the objects of its resources, each still strictly
valid, with the image placeholder rewritten.

Uses $KUBECTL, else `kubectl` on PATH (Debian's kubernetes-client 1.20 has
kustomize built in; so do current releases). Without one it fails: `make deps`
installs kubernetes-client when no kubectl is present.
"""
import os
import shutil
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploy_util as util  # noqa: E402
import k8s_strict  # noqa: E402

K8S = os.path.join(util.DEPLOY, "k8s")
KUBECTL = os.environ.get("KUBECTL") or shutil.which("kubectl")


class KustomizeTest(unittest.TestCase):
    def test_kustomize_renders_every_object(self):
        # No cluster is needed; an empty kubeconfig makes sure none is asked.
        env = dict(os.environ, KUBECONFIG=os.devnull)
        code, out = util.run([KUBECTL, "kustomize", K8S], timeout=120, env=env)
        self.assertEqual(code, 0, out)
        rendered = util.load_yaml_text(out)

        (kustomization,) = util.load_yaml_documents(os.path.join(K8S, "kustomization.yaml"))
        sources = [d for r in kustomization["resources"]
                   for d in util.load_yaml_documents(os.path.join(K8S, r))]
        key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
        self.assertEqual(len(rendered), len(sources))
        self.assertEqual(sorted(map(key, rendered)), sorted(map(key, sources)))
        for doc in rendered:
            self.assertEqual(k8s_strict.check_object(doc, "/".join(key(doc))), [])

        (image,) = kustomization["images"]
        (deployment,) = [d for d in rendered if d["kind"] == "Deployment"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        self.assertEqual(container["image"], f"{image['newName']}:{image['newTag']}")


if __name__ == "__main__":
    if not KUBECTL:
        print("FAILED: no kubectl (Debian package kubernetes-client; `make deps` installs it)")
        sys.exit(1)
    code, version = util.run([KUBECTL, "version", "--client"], timeout=30)
    print(version.strip())
    unittest.main(verbosity=2)
