"""Calling attnserve through the Open Inference Protocol (KServe v2 gRPC) from
Python, with nothing but Debian's python3-grpcio and python3-protobuf and stubs
generated from proto/inference/v2/open_inference.proto:

    mkdir -p gen
    protoc -I proto --python_out=gen --grpc_out=gen \
        --plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin \
        proto/inference/v2/open_inference.proto
    PYTHONPATH=gen /usr/bin/python3 examples/kserve_v2/client.py \
        --target localhost:50051 --model demo --rows 4 --causal --weights mean

(protoc comes with protobuf-compiler, grpc_python_plugin with
protobuf-compiler-grpc.) Any v2 client (tritonclient, KServe's) works the same
way; this one shows the mapping: input "input" [L, d_model] (or [B, L,
d_model]) as raw little-endian FP32 (or BF16/FP16) bytes, parameters causal /
window / weights / pooling, outputs "output" and "attention" in
raw_output_contents, the batch statistics in the reply's parameters.
"""
import argparse
import random
import struct
import sys

import grpc
from inference.v2 import open_inference_pb2 as pb
from inference.v2 import open_inference_pb2_grpc as pb_grpc


def to_raw(values, datatype="FP32"):
    """Little-endian raw bytes of `values` (a flat list of floats)."""
    if datatype == "FP32":
        return struct.pack("<%df" % len(values), *values)
    if datatype == "FP16":
        return struct.pack("<%de" % len(values), *values)
    if datatype == "BF16":  # the top 16 bits of FP32, rounded to nearest even
        words = struct.unpack("<%dI" % len(values), struct.pack("<%df" % len(values), *values))
        return struct.pack("<%dH" % len(values),
                           *(((w + 0x7FFF + ((w >> 16) & 1)) >> 16) & 0xFFFF for w in words))
    raise ValueError("unsupported datatype " + datatype)


def from_raw_fp32(raw):
    return list(struct.unpack("<%df" % (len(raw) // 4), raw))


def parameter(value):
    """An InferParameter holding a bool, an int or a string."""
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    return pb.InferParameter(string_param=value)


def make_request(model, values, shape, datatype="FP32", params=None, outputs=None,
                 edges=None, raw=True, request_id=""):
    """A ModelInferRequest for input `values` (flat, row-major) of `shape`."""
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    for name, value in (params or {}).items():
        request.parameters[name].CopyFrom(parameter(value))
    tensor = request.inputs.add(name="input", datatype=datatype, shape=shape)
    if raw:
        request.raw_input_contents.append(to_raw(values, datatype))
    else:  # typed contents: FP32 only
        tensor.contents.fp32_contents.extend(values)
    if edges:
        e = request.inputs.add(name="edges", datatype="INT64", shape=[len(edges) // 2, 2])
        if raw:
            request.raw_input_contents.append(struct.pack("<%dq" % len(edges), *edges))
        else:
            e.contents.int64_contents.extend(edges)
    for name in outputs or []:
        request.outputs.add(name=name)
    return request


def outputs_of(reply):
    """{name: (shape, flat FP32 values)} of a ModelInferResponse."""
    return {t.name: (list(t.shape), from_raw_fp32(reply.raw_output_contents[i]))
            for i, t in enumerate(reply.outputs)}


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="localhost:50051")
    p.add_argument("--model", default="demo")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--datatype", default="FP32", choices=["FP32", "BF16", "FP16"])
    p.add_argument("--causal", action="store_true")
    p.add_argument("--weights", default="none", choices=["none", "per_head", "mean"])
    p.add_argument("--token", default="", help="bearer token (sent as authorization metadata)")
    args = p.parse_args(argv)

    channel = grpc.insecure_channel(args.target)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    metadata = [("authorization", "Bearer " + args.token)] if args.token else None
    print("live:", stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live)
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=args.model), timeout=10,
                              metadata=metadata)
    d_model = meta.inputs[0].shape[-1]
    rng = random.Random(1)
    values = [rng.uniform(-1, 1) for _ in range(args.rows * d_model)]
    request = make_request(args.model, values, [args.rows, d_model], args.datatype,
                           params={"causal": args.causal, "weights": args.weights})
    reply = stub.ModelInfer(request, timeout=30, metadata=metadata)
    for name, (shape, data) in outputs_of(reply).items():
        print(name, shape, "first values:", [round(v, 4) for v in data[:3]])
    print("stats:", {k: v.int64_param for k, v in sorted(reply.parameters.items())})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
