"""Strict checking of Kubernetes objects against the Kubernetes object model.

Each document is walked against the generated model classes of Debian's
python3-kubernetes (their `openapi_types` and `attribute_map`), then built
with those classes, whose setters reject missing required fields and bad enum
values. Unlike ApiClient.deserialize, which drops unknown fields and coerces
types (int("5")), every unknown field and every wrong type is an error here,
as it is for `kubectl apply --validate=strict`.

Debian 12's client carries the models of Kubernetes 1.22, so two gaps are
filled by hand, both written out below and kept to what the manifests use:
- autoscaling/v2 HorizontalPodAutoscaler (GA in 1.23) is autoscaling/v2beta2
  promoted with the same schema, so it is checked with the v2beta2 classes;
- Probe.grpc (native gRPC probes, 1.24+) is added as an extension field.
The prometheus-operator ServiceMonitor is a CRD the client does not know: it is
checked against SERVICE_MONITOR, a schema of the fields of
monitoring.coreos.com/v1 that we use or might, with the CRD's types and enums;
cert-manager's Certificate (deploy/k8s/overlays/tls) likewise, against
CERTIFICATE.
"""
import re

import kubernetes.client as k8s

# apiVersion, kind -> model class of python3-kubernetes.
KINDS = {
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Service"): "V1Service",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2beta2HorizontalPodAutoscaler",
    ("v1", "Secret"): "V1Secret",
}

# Fields of IntOrString type; the models type them as `object`.
INT_OR_STRING = {"targetPort", "port", "maxSurge", "maxUnavailable", "minAvailable"}


# --- A small schema language for what the models lack. -------------------
def obj(fields, required=()):
    return {"type": "object", "fields": fields, "required": set(required)}


def arr(items, min_items=0):
    return {"type": "array", "items": items, "min_items": min_items}


def string(enum=None, pattern=None):
    return {"type": "string", "enum": enum, "pattern": pattern}


def model(class_name):
    return {"type": "model", "class": class_name}


INT32 = {"type": "int"}
BOOL = {"type": "bool"}
INT_OR_STR = {"type": "int-or-string"}

# Kubernetes GRPCAction (core/v1, 1.24+): port is required, service optional.
GRPC_ACTION = obj({"port": INT32, "service": string()}, required=["port"])
EXTENSIONS = {"V1Probe": {"grpc": GRPC_ACTION}}

# Prometheus durations as the ServiceMonitor CRD validates them.
DURATION = string(pattern=r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
                          r"(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
RELABEL = obj({
    "sourceLabels": arr(string()), "separator": string(), "targetLabel": string(),
    "regex": string(), "modulus": INT32, "replacement": string(),
    "action": string(enum=["replace", "Replace", "keep", "Keep", "drop", "Drop",
                           "hashmod", "HashMod", "labelmap", "LabelMap", "labeldrop",
                           "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase",
                           "uppercase", "Uppercase", "keepequal", "KeepEqual",
                           "dropequal", "DropEqual"]),
})
SERVICE_MONITOR = obj({
    "apiVersion": string(enum=["monitoring.coreos.com/v1"]),
    "kind": string(enum=["ServiceMonitor"]),
    "metadata": model("V1ObjectMeta"),
    "spec": obj({
        "selector": model("V1LabelSelector"),
        "namespaceSelector": obj({"any": BOOL, "matchNames": arr(string())}),
        "jobLabel": string(),
        "targetLabels": arr(string()),
        "podTargetLabels": arr(string()),
        "sampleLimit": INT32,
        "endpoints": arr(obj({
            "port": string(), "targetPort": INT_OR_STR, "path": string(),
            "scheme": string(enum=["http", "https"]),
            "interval": DURATION, "scrapeTimeout": DURATION,
            "honorLabels": BOOL, "honorTimestamps": BOOL,
            "relabelings": arr(RELABEL), "metricRelabelings": arr(RELABEL),
        }), min_items=1),
    }, required=["selector", "endpoints"]),
}, required=["apiVersion", "kind", "metadata", "spec"])

# cert-manager's Certificate (cert-manager.io/v1), the fields of its CRD that
# we use or might, with the CRD's types and enums.
CERTIFICATE = obj({
    "apiVersion": string(enum=["cert-manager.io/v1"]),
    "kind": string(enum=["Certificate"]),
    "metadata": model("V1ObjectMeta"),
    "spec": obj({
        "secretName": string(),
        "commonName": string(),
        "dnsNames": arr(string()), "ipAddresses": arr(string()), "uris": arr(string()),
        "duration": string(pattern=r"^([0-9]+(\.[0-9]+)?(h|m|s|ms))+$"),
        "renewBefore": string(pattern=r"^([0-9]+(\.[0-9]+)?(h|m|s|ms))+$"),
        "isCA": BOOL,
        "usages": arr(string(enum=[
            "signing", "digital signature", "content commitment", "key encipherment",
            "key agreement", "data encipherment", "cert sign", "crl sign", "encipher only",
            "decipher only", "any", "server auth", "client auth", "code signing",
            "email protection", "s/mime", "ipsec end system", "ipsec tunnel", "ipsec user",
            "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"])),
        "privateKey": obj({
            "algorithm": string(enum=["RSA", "ECDSA", "Ed25519"]),
            "size": INT32,
            "encoding": string(enum=["PKCS1", "PKCS8"]),
            "rotationPolicy": string(enum=["Never", "Always"]),
        }),
        "issuerRef": obj({"name": string(), "kind": string(), "group": string()},
                         required=["name"]),
        "secretTemplate": obj({"annotations": {"type": "string-map"},
                               "labels": {"type": "string-map"}}),
    }, required=["secretName", "issuerRef"]),
}, required=["apiVersion", "kind", "metadata", "spec"])

# kustomize's Kustomization, the fields the kustomize of kubectl 1.20 and
# current kustomize both accept and that we use.
KUSTOMIZATION = obj({
    "apiVersion": string(enum=["kustomize.config.k8s.io/v1beta1"]),
    "kind": string(enum=["Kustomization"]),
    "namespace": string(),
    "resources": arr(string(), min_items=1),
    "images": arr(obj({"name": string(), "newName": string(), "newTag": string(),
                       "digest": string()}, required=["name"])),
}, required=["apiVersion", "kind", "resources"])

# An overlay's Kustomization (deploy/k8s/overlays/*): the fields both
# kustomize generations accept. `bases`, `patchesStrategicMerge` and
# `patchesJson6902` are what kubectl 1.20 knows (current kustomize warns that
# they are deprecated but applies them the same).
_GENERATOR = obj({"name": string(), "type": string(), "behavior": string(
    enum=["create", "replace", "merge"]), "files": arr(string()),
    "literals": arr(string())}, required=["name"])
OVERLAY_KUSTOMIZATION = obj({
    "apiVersion": string(enum=["kustomize.config.k8s.io/v1beta1"]),
    "kind": string(enum=["Kustomization"]),
    "namespace": string(),
    "bases": arr(string(), min_items=1),
    "resources": arr(string()),
    "patchesStrategicMerge": arr(string()),
    "patchesJson6902": arr(obj({
        "target": obj({"group": string(), "version": string(), "kind": string(),
                       "name": string(), "namespace": string()},
                      required=["version", "kind", "name"]),
        "path": string()}, required=["target", "path"])),
    "generatorOptions": obj({"disableNameSuffixHash": BOOL, "labels": {"type": "string-map"},
                             "annotations": {"type": "string-map"}}),
    "secretGenerator": arr(_GENERATOR),
    "configMapGenerator": arr(_GENERATOR),
    "images": KUSTOMIZATION["fields"]["images"],
}, required=["apiVersion", "kind", "bases"])

_LIST = re.compile(r"^list\[(.+)\]$")
_DICT = re.compile(r"^dict\(str, (.+)\)$")


def _kind(value):
    return type(value).__name__


class Checker:
    """Collects every violation in `errors` as "path: what is wrong"."""

    def __init__(self):
        self.errors = []

    def _error(self, path, message):
        self.errors.append(f"{path}: {message}")

    # Against a python3-kubernetes type name from `openapi_types`.
    def model(self, value, type_name, path):
        m = _LIST.match(type_name)
        if m:
            if not isinstance(value, list):
                return self._error(path, f"expected a list, got {_kind(value)}")
            return [self.model(v, m.group(1), f"{path}[{i}]") for i, v in enumerate(value)]
        m = _DICT.match(type_name)
        if m:
            if not isinstance(value, dict):
                return self._error(path, f"expected a map, got {_kind(value)}")
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    self._error(path, f"map key {k!r} is not a string")
                out[k] = self.model(v, m.group(1), f"{path}.{k}")
            return out
        if type_name == "object":
            field = path.rsplit(".", 1)[-1]
            if field in INT_OR_STRING and (isinstance(value, bool)
                                           or not isinstance(value, (int, str))):
                self._error(path, f"expected an integer or a string, got {_kind(value)}")
            return value
        if type_name in ("str", "int", "bool", "float", "datetime", "date"):
            return self._primitive(value, type_name, path)
        return self._model_object(value, type_name, path)

    def _primitive(self, value, type_name, path):
        ok = {
            "str": isinstance(value, str),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        }.get(type_name, isinstance(value, str))
        if not ok:
            self._error(path, f"expected {type_name}, got {_kind(value)} {value!r}")
        return value

    def _model_object(self, value, class_name, path):
        klass = getattr(k8s, class_name)
        if not isinstance(value, dict):
            return self._error(path, f"expected a {class_name} object, got {_kind(value)}")
        extensions = EXTENSIONS.get(class_name, {})
        by_json = {json_name: attr for attr, json_name in klass.attribute_map.items()}
        errors_before = len(self.errors)
        kwargs = {}
        for key, v in value.items():
            if key in extensions:
                self.schema(v, extensions[key], f"{path}.{key}")
            elif key in by_json:
                attr = by_json[key]
                kwargs[attr] = self.model(v, klass.openapi_types[attr], f"{path}.{key}")
            else:
                self._error(path, f"unknown field {key!r} in {class_name}")
        if len(self.errors) > errors_before:
            return None
        try:
            return klass(**kwargs)  # the setters check required fields and enums
        except (ValueError, TypeError) as e:
            return self._error(path, f"{class_name}: {e}")

    # Against a hand-written schema (see obj, arr, string, model above).
    def schema(self, value, s, path):
        t = s["type"]
        if t == "model":
            return self.model(value, s["class"], path)
        if t == "object":
            if not isinstance(value, dict):
                return self._error(path, f"expected an object, got {_kind(value)}")
            for key in s["required"] - value.keys():
                self._error(path, f"missing required field {key!r}")
            for key, v in value.items():
                if key not in s["fields"]:
                    self._error(path, f"unknown field {key!r}")
                else:
                    self.schema(v, s["fields"][key], f"{path}.{key}")
        elif t == "array":
            if not isinstance(value, list):
                return self._error(path, f"expected a list, got {_kind(value)}")
            if len(value) < s["min_items"]:
                self._error(path, f"needs at least {s['min_items']} item(s)")
            for i, v in enumerate(value):
                self.schema(v, s["items"], f"{path}[{i}]")
        elif t == "string":
            if not isinstance(value, str):
                return self._error(path, f"expected a string, got {_kind(value)} {value!r}")
            if s["enum"] is not None and value not in s["enum"]:
                self._error(path, f"{value!r} is not one of {s['enum']}")
            if s["pattern"] is not None and not re.match(s["pattern"], value):
                self._error(path, f"{value!r} does not match {s['pattern']}")
        elif t == "int":
            self._primitive(value, "int", path)
        elif t == "bool":
            self._primitive(value, "bool", path)
        elif t == "string-map":
            if not isinstance(value, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                self._error(path, f"expected a map of strings, got {value!r}")
        elif t == "int-or-string":
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                self._error(path, f"expected an integer or a string, got {_kind(value)}")
        return value


def check_object(doc, path="<doc>"):
    """Errors (a list of strings, empty when valid) of one Kubernetes object."""
    checker = Checker()
    if not isinstance(doc, dict):
        return [f"{path}: a document must be a mapping, got {_kind(doc)}"]
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key == ("monitoring.coreos.com/v1", "ServiceMonitor"):
        checker.schema(doc, SERVICE_MONITOR, path)
    elif key == ("cert-manager.io/v1", "Certificate"):
        checker.schema(doc, CERTIFICATE, path)
    elif key in KINDS:
        checker.model(doc, KINDS[key], path)
    else:
        return [f"{path}: no model for apiVersion {key[0]!r} kind {key[1]!r}"]
    if not checker.errors and not (doc.get("metadata") or {}).get("name"):
        checker.errors.append(f"{path}: metadata.name is required")
    return checker.errors


def check_kustomization(doc, path="kustomization.yaml"):
    checker = Checker()
    checker.schema(doc, KUSTOMIZATION, path)
    return checker.errors


def check_overlay_kustomization(doc, path="kustomization.yaml"):
    checker = Checker()
    checker.schema(doc, OVERLAY_KUSTOMIZATION, path)
    return checker.errors


def check_model(value, type_name, path):
    """Errors of `value` as the python3-kubernetes type `type_name`."""
    checker = Checker()
    checker.model(value, type_name, path)
    return checker.errors
