"""Helpers shared by the deployment-kit tests (tests/deploy_*_test.py).

Run with Debian's /usr/bin/python3 (ctest does), which sees python3-yaml and
python3-kubernetes. Nothing here touches the network.
"""
import json
import os
import re
import shutil
import subprocess

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(REPO, "deploy")


# The series attnserve exports (DESIGN.md, "Metrics"). Histograms also export
# NAME_bucket, NAME_sum and NAME_count.
COUNTERS = ["attnserve_requests_total", "attnserve_tokens_total", "attnserve_engine_failures_total",
            "attnserve_model_load_failures_total", "attnserve_session_appends_total",
            "attnserve_sessions_ended_total",
            "process_cpu_seconds_total"]
GAUGES = ["attnserve_queue_depth", "attnserve_inflight_requests", "attnserve_model_info",
          "attnserve_sessions_active", "attnserve_session_cache_bytes",
          "process_resident_memory_bytes", "process_start_time_seconds"]
HISTOGRAMS = ["attnserve_request_duration_seconds", "attnserve_queue_duration_seconds",
              "attnserve_compute_duration_seconds", "attnserve_batch_size",
              "attnserve_batch_tokens"]


def server_series():
    """Every series name a scrape of attnserve can hold."""
    names = set(COUNTERS) | set(GAUGES)
    for h in HISTOGRAMS:
        names |= {h + "_bucket", h + "_sum", h + "_count"}
    return names


def metric_names_declared_by_server():
    """The metric family names written as string literals in server/metrics.cc."""
    with open(os.path.join(REPO, "server", "metrics.cc")) as f:
        text = f.read()
    return set(re.findall(r'"((?:attnserve|process)_[a-z_]+)"', text))


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a key given twice in one mapping (PyYAML
    silently keeps the last one; kubectl rejects the manifest)."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_documents(path):
    """Every non-empty YAML document in `path`, duplicate keys rejected."""
    with open(path) as f:
        return [d for d in yaml.load_all(f, Loader=_StrictLoader) if d is not None]


def load_yaml_text(text):
    return [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]


def load_json(path):
    with open(path) as f:
        return json.load(f)


def run(args, timeout=60, **kwargs):
    """Runs `args`; returns (exit code, stdout + stderr)."""
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout, text=True, **kwargs)
    return proc.returncode, proc.stdout


def promtool():
    """Path of promtool (Debian package prometheus), or None."""
    return shutil.which("promtool")


def flag_env_names_from_source():
    """ATTNSERVE_* variable of every flag declared in server/options.cc."""
    with open(os.path.join(REPO, "server", "options.cc")) as f:
        text = f.read()
    flags = re.findall(r'Flag\(app,\s*"([a-z0-9-]+)"', text)
    return {"ATTNSERVE_" + f.upper().replace("-", "_") for f in flags}


def flag_env_names_from_help(binary):
    """ATTNSERVE_* variable of every --flag `attnserve --help` lists."""
    code, out = run([binary, "--help"], timeout=30)
    if code != 0:
        raise AssertionError(f"{binary} --help exited {code}:\n{out}")
    flags = set(re.findall(r"^\s*--([a-z0-9-]+)", out, re.M)) - {"help", "version"}
    return {"ATTNSERVE_" + f.upper().replace("-", "_") for f in flags}


def configmap_flags():
    """The data of deploy/k8s/base/configmap.yaml: ATTNSERVE_* -> string value."""
    (doc,) = load_yaml_documents(os.path.join(DEPLOY, "k8s", "base", "configmap.yaml"))
    return doc["data"]


def demo_model_config():
    return load_json(os.path.join(REPO, "models", "demo", "config.json"))


def model_names():
    """The models of the embedded repository (directories under models/)."""
    root = os.path.join(REPO, "models")
    return {d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "config.json"))}
