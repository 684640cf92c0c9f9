#!/usr/bin/env python3
"""Writes the ghz call data of the KServe v2 scenario (infer.json): a JSON
array of inference.ModelInferRequest messages in the protobuf JSON mapping
(raw_input_contents as base64, as ghz expects for bytes) for the demo model
(d_model 256), which ghz sends round-robin, one message per call: FP32 raw
[16, 256] inputs (one causal, one with mean attention weights), a BF16 raw one
(half the bytes) and a batched [2, 8, 256] one.

Deterministic (a seeded generator, values rounded to 3 decimals), so every
machine writes the same bytes; data/infer.json is committed.

  python3 make_data.py [--out DIR]

Standard library only; any python3 will do.
"""
import argparse
import base64
import json
import os
import random
import struct

D_MODEL = 256  # models/demo/config.json
MODEL = "demo"
# (shape, datatype, parameters) per request.
REQUESTS = [
    ([16, D_MODEL], "FP32", {}),
    ([16, D_MODEL], "FP32", {"causal": {"bool_param": True}}),
    ([16, D_MODEL], "FP32", {"weights": {"string_param": "mean"}}),
    ([16, D_MODEL], "BF16", {}),
    ([2, 8, D_MODEL], "FP32", {"pooling": {"string_param": "mean"}}),
]


def raw(values, datatype):
    packed = struct.pack("<%df" % len(values), *values)
    if datatype == "FP32":
        return packed
    words = struct.unpack("<%dI" % len(values), packed)  # BF16: round to nearest even
    return struct.pack("<%dH" % len(values),
                       *(((w + 0x7FFF + ((w >> 16) & 1)) >> 16) & 0xFFFF for w in words))


def requests():
    rng = random.Random(13)
    out = []
    for i, (shape, datatype, params) in enumerate(REQUESTS):
        n = 1
        for d in shape:
            n *= d
        values = [round(rng.uniform(-1, 1), 3) for _ in range(n)]
        r = {"model_name": MODEL, "id": "ghz-%d" % i,
             "inputs": [{"name": "input", "datatype": datatype, "shape": shape}],
             "raw_input_contents": [base64.b64encode(raw(values, datatype)).decode("ascii")]}
        if params:
            r["parameters"] = params
        out.append(r)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "infer.json"), "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(r, separators=(",", ":")) for r in requests())
                + "\n]\n")


if __name__ == "__main__":
    main()
