#!/usr/bin/python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/NAME/.

Small, deterministic inputs that reach deep into each parser: valid files
of every form it accepts plus a few near misses. Run from anywhere:
/usr/bin/python3 tests/fuzz/make_seeds.py (rewrites the seed_* files only;
inputs libFuzzer added to a corpus are left alone).
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed_" + name), "wb") as f:
        f.write(data)


# ---- protobuf wire format, by hand (no generated code needed) ----
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num, v):
    return varint(num << 3 | 0) + varint(v)


def field_bytes(num, payload):
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def matrix(rows, cols, values=None):
    if values is None:
        values = [((i * 37) % 17) / 8.0 - 1.0 for i in range(rows * cols)]
    return (field_varint(1, rows) + field_varint(2, cols) +
            field_bytes(3, struct.pack("<%df" % len(values), *values)))


def mask(causal=False, window=0, edges=()):
    out = b""
    if causal:
        out += field_varint(1, 1)
    if window:
        out += field_varint(2, window)
    if edges:
        out += field_bytes(3, b"".join(varint(e) for e in edges))
    return out


def request(rows, cols=8, m=b"", weights=0, pooling=0, model=b"", rid=b""):
    out = b""
    if model:
        out += field_bytes(1, model)
    if rid:
        out += field_bytes(2, rid)
    out += field_bytes(3, matrix(rows, cols))
    if m:
        out += field_bytes(4, m)
    if weights:
        out += field_varint(5, weights)
    if pooling:
        out += field_varint(6, pooling)
    return out


def request_seeds():
    write("request", "plain_L1", request(1))
    write("request", "causal_perhead_L5", request(5, m=mask(causal=True), weights=1))
    write("request", "window_mean_pool_L7", request(7, m=mask(window=2), weights=2, pooling=1))
    write("request", "edges_first_L4", request(4, m=mask(edges=[0, 1, 1, 0, 2, 2, 3, 0]), pooling=2,
                                               weights=1, rid=b"req-1", model=b"rotary"))
    write("request", "causal_window_L16", request(16, m=mask(causal=True, window=3), weights=2))
    write("request", "too_long_L20", request(20))
    write("request", "wrong_cols", request(3, cols=7))
    write("request", "odd_edges", request(3, m=mask(edges=[0, 1, 2])))
    write("request", "edge_out_of_range", request(3, m=mask(edges=[0, 9])))
    write("request", "nan", field_bytes(3, matrix(1, 8, [float("nan")] + [0.0] * 7)))
    write("request", "unknown_field", request(2) + field_varint(99, 7))
    write("request", "truncated", request(3)[:-5])
    write("request", "bad_enum", request(2, weights=7, pooling=9))


def config_seeds():
    models = os.path.join(REPO, "models")
    golden = os.path.join(REPO, "tests", "golden", "data")
    n = 0
    for root in (models, golden):
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name, "config.json")
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    write("model_config", "%02d_%s" % (n, name), f.read())
                n += 1
    base = {"d_model": 16, "num_heads": 4, "positional": "rotary", "max_length": 64,
            "relevance": "additive", "normalization": "relu", "projections": False,
            "precision": "bf16", "scale": 0.25}
    write("model_config", "all_keys", json.dumps(base))
    write("model_config", "minimal", '{"d_model": 4, "num_heads": 1}')
    write("model_config", "bad_heads", '{"d_model": 6, "num_heads": 4}')
    write("model_config", "bad_type", '{"d_model": "8", "num_heads": 2}')
    write("model_config", "unknown_key", '{"d_model": 8, "num_heads": 2, "dropout": 0.1}')
    write("model_config", "negative_scale", '{"d_model": 8, "num_heads": 2, "scale": -1e309}')


def safetensors(tensors, dtype="F32", metadata=True):
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = {"format": "pt"}
    for name, (shape, values) in sorted(tensors.items()):
        if dtype == "F32":
            raw = struct.pack("<%df" % len(values), *values)
        else:  # BF16: the upper half of each fp32
            raw = b"".join(struct.pack("<f", v)[2:] for v in values)
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def safetensors_seeds():
    # The fuzz target's model: d_model 4, 2 heads, learned positions
    # (max_length 3), additive relevance, projections.
    def vals(n, s):
        return [((i * 7 + s) % 11) / 10.0 - 0.5 for i in range(n)]
    packed = {
        "in_proj_weight": ([12, 4], vals(48, 1)), "in_proj_bias": ([12], vals(12, 2)),
        "out_proj.weight": ([4, 4], vals(16, 3)), "out_proj.bias": ([4], vals(4, 4)),
        "pos_embedding.weight": ([3, 4], vals(12, 5)), "additive_v": ([2, 2], vals(4, 6)),
    }
    write("safetensors", "model_f32", safetensors(packed))
    write("safetensors", "model_bf16", safetensors(packed, dtype="BF16", metadata=False))
    separate = {k: v for k, v in packed.items() if not k.startswith("in_proj")}
    for i, p in enumerate("qkv"):
        separate[p + "_proj.weight"] = ([4, 4], vals(16, 10 + i))
        separate[p + "_proj.bias"] = ([4], vals(4, 20 + i))
    write("safetensors", "model_separate", safetensors(separate))
    write("safetensors", "empty_header", struct.pack("<Q", 2) + b"{}")
    write("safetensors", "f16_tensor", safetensors({"x": ([2], [1.0, 2.0])}).replace(b"F32", b"F16"))
    write("safetensors", "header_too_big", struct.pack("<Q", 1 << 40) + b"{}")


def npy(shape, values, version=1, descr="<f4", fortran=False):
    header = "{'descr': '%s', 'fortran_order': %s, 'shape': (%s), }" % (
        descr, "True" if fortran else "False",
        ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else ""))
    prefix = 10 if version == 1 else 12
    pad = (64 - (prefix + len(header) + 1) % 64) % 64
    header = (header + " " * pad + "\n").encode()
    size = struct.pack("<H", len(header)) if version == 1 else struct.pack("<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + size + header + struct.pack(
        "<%df" % len(values), *values)


def npy_seeds():
    write("npy", "2d", npy([3, 4], [i / 4.0 for i in range(12)]))
    write("npy", "1d", npy([5], [1.0] * 5))
    write("npy", "3d_v2", npy([2, 1, 2], [0.5] * 4, version=2))
    write("npy", "scalar_v3", npy([], [3.0], version=3))
    write("npy", "f8", npy([1], [0.0], descr="<f8"))
    write("npy", "fortran", npy([2, 2], [0.0] * 4, fortran=True))
    write("npy", "short_data", npy([4, 4], [0.0] * 3))


if __name__ == "__main__":
    request_seeds()
    config_seeds()
    safetensors_seeds()
    npy_seeds()
