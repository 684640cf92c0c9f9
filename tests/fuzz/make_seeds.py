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
    # Finite, but the output overflows float: accepted, no finiteness claim.
    write("request", "flt_max_L2", field_bytes(3, matrix(2, 8, [3.4e38, -3.4e38] * 8)))
    write("request", "1e30_L2", field_bytes(3, matrix(2, 8, [1e30, -1e30] * 8)))
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


# ---- KServe v2 ModelInferRequest (proto/inference/v2/open_inference.proto) ----
def svarint(n):  # int32/int64 fields: negatives are 10-byte two's complement
    return varint(n & 0xFFFFFFFFFFFFFFFF)


def v2_param(kind, value):
    """An InferParameter: kind bool | int64 | string | double | uint64."""
    if kind == "bool":
        return field_varint(1, 1 if value else 0)
    if kind == "int64":
        return varint(2 << 3) + svarint(value)
    if kind == "string":
        return field_bytes(3, value.encode())
    if kind == "double":
        return varint(4 << 3 | 1) + struct.pack("<d", value)
    return field_varint(5, value)


def v2_params(num, params):
    """map<string, InferParameter> field `num` from [(name, kind, value)]."""
    return b"".join(field_bytes(num, field_bytes(1, n.encode()) + field_bytes(2, v2_param(k, v)))
                    for n, k, v in params)


def v2_values(n, start=0):
    return [(((i + start) * 37) % 17) / 8.0 - 1.0 for i in range(n)]


def v2_raw(datatype, values):
    if datatype == "FP32":
        return struct.pack("<%df" % len(values), *values)
    if datatype == "BF16":  # the upper half of each fp32
        return b"".join(struct.pack("<f", v)[2:] for v in values)
    if datatype == "FP16":
        return struct.pack("<%de" % len(values), *values)
    if datatype == "INT32":
        return struct.pack("<%di" % len(values), *values)
    return struct.pack("<%dq" % len(values), *values)


def v2_tensor(name, datatype, shape, params=(), contents=b""):
    out = field_bytes(1, name.encode()) + field_bytes(2, datatype.encode())
    out += field_bytes(3, b"".join(svarint(d) for d in shape))  # packed int64
    out += v2_params(4, params)
    if contents:
        out += field_bytes(5, contents)
    return out


def v2_contents(fp32=None, int32=None, int64=None):
    out = b""
    if int32 is not None:
        out += field_bytes(2, b"".join(svarint(v) for v in int32))
    if int64 is not None:
        out += field_bytes(3, b"".join(svarint(v) for v in int64))
    if fp32 is not None:
        out += field_bytes(6, struct.pack("<%df" % len(fp32), *fp32))
    return out


def v2_request(inputs, raws=(), params=(), outputs=(), model=b"", rid=b""):
    """inputs: encoded InferInputTensor messages; raws: raw_input_contents."""
    out = b""
    if model:
        out += field_bytes(1, model)
    if rid:
        out += field_bytes(3, rid)
    out += v2_params(4, params)
    out += b"".join(field_bytes(5, t) for t in inputs)
    out += b"".join(field_bytes(6, field_bytes(1, o.encode())) for o in outputs)
    out += b"".join(field_bytes(7, r) for r in raws)
    return out


def v2_input(shape, datatype="FP32", values=None, params=(), name="input"):
    """(tensor, raw) of input `input` sent raw."""
    n = 1
    for d in shape:
        n *= d
    if values is None:
        values = v2_values(n)
    return v2_tensor(name, datatype, shape, params), v2_raw(datatype, values)


def v2_raw_request(shape, datatype="FP32", values=None, tensor_params=(), edges=None,
                   edges_type="INT32", **kw):
    t, r = v2_input(shape, datatype, values, tensor_params)
    inputs, raws = [t], [r]
    if edges is not None:
        inputs.append(v2_tensor("edges", edges_type, [len(edges) // 2, 2]))
        raws.append(v2_raw(edges_type, edges))
    return v2_request(inputs, raws, **kw)


def v2_request_seeds():
    w = lambda name, data: write("v2_request", name, data)
    # Valid, every form: raw FP32 / contents FP32 / BF16 / FP16, rank 2 and 3.
    w("fp32_raw_L4", v2_raw_request([4, 8]))
    w("fp32_contents_L3", v2_request([v2_tensor("input", "FP32", [3, 8],
                                                contents=v2_contents(fp32=v2_values(24)))]))
    w("bf16_raw_L5_mean", v2_raw_request([5, 8], "BF16", params=[("weights", "string", "mean")]))
    fp16 = v2_values(48)
    fp16[3], fp16[5], fp16[7] = 6.0e-8, -65504.0, -0.0  # subnormal, largest, negative zero
    w("fp16_raw_L6_causal_perhead", v2_raw_request(
        [6, 8], "FP16", fp16, params=[("causal", "bool", True), ("weights", "string", "per_head")]))
    w("batched_B3_L4_perhead_meanpool", v2_raw_request(
        [3, 4, 8], params=[("weights", "string", "per_head"), ("pooling", "string", "mean")],
        rid=b"batch-1", model=b"plain"))
    w("batched_B2_L3_bf16_first", v2_raw_request([2, 3, 8], "BF16",
                                                 params=[("pooling", "string", "first")]))
    # Edges: INT32 raw, INT64 contents (every sequence of a batch).
    w("edges_int32_raw_L4", v2_raw_request([4, 8], edges=[0, 1, 1, 0, 2, 2, 3, 0],
                                           params=[("weights", "string", "mean")]))
    w("edges_int64_raw_B2", v2_raw_request([2, 3, 8], edges=[0, 0, 2, 1], edges_type="INT64"))
    w("edges_int64_contents_L3", v2_request([
        v2_tensor("input", "FP32", [3, 8], contents=v2_contents(fp32=v2_values(24, 5))),
        v2_tensor("edges", "INT64", [3, 2], contents=v2_contents(int64=[0, 1, 1, 2, 2, 0]))]))
    w("edges_int32_contents_empty", v2_request([
        v2_tensor("input", "FP32", [2, 8], contents=v2_contents(fp32=v2_values(16))),
        v2_tensor("edges", "INT32", [0, 2])]))
    # Parameters on the request, on the tensor, on both (agreeing), unknown ones.
    all_params = [("causal", "bool", True), ("window", "int64", 2),
                  ("weights", "string", "mean"), ("pooling", "string", "none")]
    w("params_request_L7", v2_raw_request([7, 8], params=all_params))
    w("params_tensor_L7", v2_raw_request([7, 8], tensor_params=[
        ("causal", "bool", False), ("window", "uint64", 3), ("weights", "string", "per_head"),
        ("pooling", "string", "first")]))
    w("params_both_agree", v2_raw_request([5, 8], params=[("window", "int64", 1)],
                                          tensor_params=[("window", "uint64", 1),
                                                         ("causal", "bool", True)]))
    w("params_unknown", v2_raw_request([2, 8], params=[
        ("binary_data_output", "bool", True), ("priority", "uint64", 9),
        ("temperature", "double", 0.5)]))
    # Requested outputs.
    w("outputs_attention_only", v2_raw_request([4, 8], outputs=["attention"]))
    w("outputs_attention_output_mean", v2_raw_request(
        [4, 8], params=[("weights", "string", "mean")], outputs=["attention", "output"]))
    w("outputs_output_only_weights", v2_raw_request(
        [3, 8], params=[("weights", "string", "per_head")], outputs=["output"]))
    # Extreme finite values: the largest FP32 and BF16 (outputs may overflow
    # to infinity), 1e30 (outputs must stay finite), subnormals.
    fmax = struct.unpack("<f", struct.pack("<I", 0x7F7FFFFF))[0]
    w("fp32_max_perhead", v2_raw_request(
        [6, 8], values=[fmax if i % 3 else -fmax for i in range(48)],
        params=[("weights", "string", "per_head")]))
    w("bf16_max_meanpool", v2_raw_request([6, 8], "BF16", values=[-fmax] * 48,
                                          params=[("pooling", "string", "mean")]))
    w("fp32_1e30_mean", v2_raw_request(
        [5, 8], values=[1e30 if i % 2 else -1e30 for i in range(40)],
        params=[("weights", "string", "mean")]))
    w("fp32_subnormal_B3", v2_raw_request([3, 2, 8], values=[1e-45] * 48,
                                          params=[("weights", "string", "per_head")]))
    # Limits: L over max_length (learned: OUT_OF_RANGE), reply over the limit.
    w("too_long_L20", v2_raw_request([20, 8]))
    w("reply_too_big_B4_L16", v2_raw_request([4, 16, 8],
                                             params=[("weights", "string", "per_head")]))
    w("edges_times_batch_over_limit", v2_request([  # 2 x 520 pairs x 8 bytes > 8 KiB
        v2_tensor("input", "FP32", [2, 2, 8], contents=v2_contents(fp32=v2_values(32))),
        v2_tensor("edges", "INT32", [520, 2], contents=v2_contents(int32=[0, 1] * 520))]))
    w("long_id", v2_raw_request([2, 8], rid=b"r" * 100, model=b"m" * 80))
    # Near misses.
    t, _ = v2_input([2, 8])
    w("wrong_datatype", v2_request([v2_tensor("input", "fp32", [2, 8])],
                                   [v2_raw("FP32", v2_values(16))]))
    w("int8_datatype", v2_request([v2_tensor("input", "INT8", [2, 8])], [bytes(range(16))]))
    w("raw_size_mismatch", v2_request([t], [v2_raw("FP32", v2_values(15))]))
    w("raw_count_mismatch", v2_request([t, v2_tensor("edges", "INT32", [1, 2])],
                                       [v2_raw("FP32", v2_values(16))]))
    w("duplicate_input", v2_request([t, t], [v2_raw("FP32", v2_values(16))] * 2))
    w("unknown_input", v2_request([t, v2_tensor("x" * 100, "FP32", [1])],
                                  [v2_raw("FP32", v2_values(16)), v2_raw("FP32", [0.0])]))
    w("missing_input", v2_request([v2_tensor("edges", "INT32", [1, 2])], [v2_raw("INT32", [0, 0])]))
    w("unknown_output", v2_raw_request([2, 8], outputs=["output", "logits"]))
    w("output_twice", v2_raw_request([2, 8], outputs=["attention", "attention"]))
    w("attention_weights_none", v2_raw_request([2, 8], params=[("weights", "string", "none")],
                                               outputs=["attention"]))
    nan = v2_values(16)
    nan[9] = float("nan")
    w("nan_fp32", v2_raw_request([2, 8], values=nan))
    w("inf_bf16", v2_raw_request([2, 8], "BF16", values=[float("inf")] + v2_values(15)))
    w("bf16_contents", v2_request([v2_tensor("input", "BF16", [1, 8],
                                             contents=v2_contents(fp32=v2_values(8)))]))
    w("raw_and_contents", v2_request([v2_tensor("input", "FP32", [1, 8],
                                                contents=v2_contents(fp32=v2_values(8)))],
                                     [v2_raw("FP32", v2_values(8))]))
    w("contents_count_mismatch", v2_request([v2_tensor("input", "FP32", [2, 8],
                                                       contents=v2_contents(fp32=v2_values(9)))]))
    w("wrong_d_model", v2_raw_request([2, 7]))
    w("rank_9_min_dims", v2_request([v2_tensor("input", "FP32", [-(1 << 63)] * 9)]))
    w("zero_dim", v2_raw_request([0, 8], values=[]))
    w("negative_dim", v2_request([v2_tensor("input", "FP32", [3, -(1 << 63), 8])]))
    w("huge_dims", v2_request([v2_tensor("input", "FP32", [1 << 40, 1 << 40, 8])]))
    w("params_conflict", v2_raw_request([2, 8], params=[("causal", "bool", True)],
                                        tensor_params=[("causal", "bool", False)]))
    w("window_negative", v2_raw_request([2, 8], params=[("window", "int64", -1)]))
    w("window_double", v2_raw_request([2, 8], params=[("window", "double", 2.0)]))
    w("weights_bad_value", v2_raw_request([2, 8], params=[("weights", "string", "all" * 40)]))
    w("edge_out_of_range", v2_raw_request([3, 8], edges=[0, 3]))
    w("edge_negative_int64", v2_raw_request([3, 8], edges=[0, -1], edges_type="INT64"))
    w("edges_wrong_shape", v2_request([t, v2_tensor("edges", "INT32", [2, 3])],
                                      [v2_raw("FP32", v2_values(16)), v2_raw("INT32", [0] * 6)]))
    w("edges_float", v2_request([t, v2_tensor("edges", "FP32", [1, 2])],
                                [v2_raw("FP32", v2_values(16)), v2_raw("FP32", [0.0, 0.0])]))
    w("truncated", v2_raw_request([4, 8])[:-7])


if __name__ == "__main__":
    request_seeds()
    v2_request_seeds()
    config_seeds()
    safetensors_seeds()
    npy_seeds()
