#!/usr/bin/env python3
"""Writes the ghz call data for the demo model (d_model 256): one JSON array of
AttendRequest messages (protobuf JSON mapping) per scenario, which ghz sends
round-robin, one message per call. The same files feed `attnctl bench --data`.

Deterministic (a seeded generator, values rounded to 3 decimals), so every
machine writes the same bytes: small.json and medium.json are committed, and
long.json (about 5 MB) is written on demand by run.sh.

  python3 make_data.py [--out DIR] [--missing] [SCENARIO...]

Standard library only; any python3 will do.
"""
import argparse
import json
import os
import random

D_MODEL = 256  # models/demo/config.json
MODEL = "demo"

# Per scenario: the nominal L (the mean length) and one entry per request:
# (L, mask, weights, pooling). Lengths are spread around the nominal L so that
# batches mix lengths as real traffic does.
SCENARIOS = {
    # Short sequences: per-request overhead and batching dominate.
    "small": (16, [(8, {}, None, None), (12, {}, None, None), (16, {}, None, None),
                   (20, {}, None, None), (24, {}, None, None), (16, {}, None, None)]),
    # Mixed: lengths, causal/window/graph masks, weights modes and pooling.
    "medium": (128, [
        (64, {}, None, None),
        (96, {"causal": True}, "WEIGHTS_MEAN", None),
        (128, {"window": 16}, None, "POOLING_MEAN"),
        (128, {"causal": True, "window": 32}, "WEIGHTS_PER_HEAD", None),
        (160, {"edges": "chain"}, None, "POOLING_FIRST"),
        (192, {}, None, None),
    ]),
    # Long sequences, no attention weights (per-head weights of L = 1024 would
    # be a 32 MiB reply): the quadratic attention dominates.
    "long": (1024, [(768, {}, None, None), (1024, {"causal": True}, None, None),
                    (1280, {}, None, None)]),
}


def chain_edges(length):
    """A graph mask: token i attends to itself and its predecessor."""
    edges = []
    for i in range(length):
        edges += [i, i]
        if i > 0:
            edges += [i, i - 1]
    return edges


def request(rng, length, mask, weights, pooling):
    data = [round(rng.uniform(-1.0, 1.0), 3) or 0.0 for _ in range(length * D_MODEL)]
    msg = {"model": MODEL, "input": {"rows": length, "cols": D_MODEL, "data": data}}
    if mask:
        mask = dict(mask)
        if mask.get("edges") == "chain":
            mask["edges"] = chain_edges(length)
        msg["mask"] = mask
    if weights:
        msg["weights"] = weights
    if pooling:
        msg["pooling"] = pooling
    return msg


def scenario_json(name):
    """The file's exact text: compact JSON, one request per line."""
    _, requests = SCENARIOS[name]
    rng = random.Random(f"attnserve-ghz-{name}")
    lines = [json.dumps(request(rng, *r), separators=(",", ":")) for r in requests]
    return "[\n" + ",\n".join(lines) + "\n]\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "data"))
    parser.add_argument("--missing", action="store_true", help="only write absent files")
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"any of {', '.join(SCENARIOS)} (default: all)")
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; known: {list(SCENARIOS)}")
    os.makedirs(args.out, exist_ok=True)
    for name in args.scenarios or SCENARIOS:
        path = os.path.join(args.out, name + ".json")
        if args.missing and os.path.exists(path):
            continue
        text = scenario_json(name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
        print(f"wrote {path} ({len(text) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
