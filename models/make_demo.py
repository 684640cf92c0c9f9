#!/usr/bin/env python3
"""Writes the embedded demo model: DIR/config.json and DIR/weights.safetensors.

Usage: python3 models/make_demo.py models/demo

Deterministic and standard-library only: values come from a splitmix64 stream
(not Python's `random`, whose algorithms may change between versions), and
every float is rounded to fp32 by struct.pack, so the bytes are the same on
every machine and Python 3 version.

Weights follow PyTorch's nn.MultiheadAttention shapes and Xavier-uniform init
(in_proj_weight is initialised as one [3d, d] tensor, as PyTorch does). PyTorch
starts biases at zero; the demo uses small non-zero biases instead so that the
bias paths of the engines are exercised by the default model.
"""

import json
import math
import os
import struct
import sys

CONFIG = {
    "d_model": 256,
    "num_heads": 8,
    "positional": "sinusoidal",
    "max_length": 4096,
    "relevance": "dot",
    "normalization": "softmax",
    "projections": True,
    "precision": "fp32",
}
SEED = 20240601
BIAS_BOUND = 0.02  # biases ~ U(-0.02, 0.02): small next to the weights

MASK64 = (1 << 64) - 1


class SplitMix64:
    """Steele, Lea and Flood's splitmix64: tiny, fast, well distributed."""

    def __init__(self, seed):
        self.state = seed & MASK64

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def uniform(self, bound):
        """A value in [-bound, bound): 53 random bits, exact in a double."""
        unit = (self.next_u64() >> 11) / float(1 << 53)
        return bound * (2.0 * unit - 1.0)


def xavier_uniform(rng, rows, cols):
    # PyTorch: fan_in = cols, fan_out = rows, bound = sqrt(6 / (fan_in + fan_out)).
    bound = math.sqrt(6.0 / (rows + cols))
    return [rng.uniform(bound) for _ in range(rows * cols)]


def make_tensors(rng):
    d = CONFIG["d_model"]
    # Drawn in a fixed order so each tensor's values never depend on dict order.
    return {
        "in_proj_weight": ([3 * d, d], xavier_uniform(rng, 3 * d, d)),
        "in_proj_bias": ([3 * d], [rng.uniform(BIAS_BOUND) for _ in range(3 * d)]),
        "out_proj.weight": ([d, d], xavier_uniform(rng, d, d)),
        "out_proj.bias": ([d], [rng.uniform(BIAS_BOUND) for _ in range(d)]),
    }


def safetensors_bytes(tensors):
    """F32 safetensors: u64 LE header size, JSON header, data in name order."""
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        shape, values = tensors[name]
        data = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": shape,
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"), sort_keys=True)
    text += " " * (-len(text) % 8)  # the spec allows space padding; aligns data
    encoded = text.encode("ascii")
    return struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks)


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: %s OUTPUT_DIR\n" % argv[0])
        return 2
    out_dir = argv[1]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="ascii") as f:
        f.write(json.dumps(CONFIG, indent=2) + "\n")
    with open(os.path.join(out_dir, "weights.safetensors"), "wb") as f:
        f.write(safetensors_bytes(make_tensors(SplitMix64(SEED))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
