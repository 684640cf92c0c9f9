#!/usr/bin/python3
"""Exports golden fixtures for tests/core_golden_test.cc from PyTorch.

For each model this writes tests/golden/data/<model>/:
  config.json, weights.safetensors  -- a model directory (DESIGN.md, "Models")
  cases.json, cases.safetensors     -- test cases: mask, weights mode, pooling,
                                       input [L, d], expected output [L, d]
                                       ([1, d] when pooled) and expected
                                       attention [H, L, L] (per_head) or
                                       [1, L, L] (mean).

The references are nn.MultiheadAttention (batch_first=True) evaluated in
float64 on exactly the fp32 (or bf16) values stored in the files, so each
fixture is the exact answer to ~1e-12 before its final rounding to fp32.
Rotary attention, which nn.MultiheadAttention cannot do, is computed by hand
in float64; the script asserts that the hand-written path without rotary
matches nn.MultiheadAttention to 1e-12.

Deterministic and re-runnable: /usr/bin/python3 tests/golden/export_golden.py
"""
import json
import math
import os
import struct

import numpy as np
import torch

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


# ---------------------------------------------------------------- safetensors

def write_safetensors(path, tensors):
    """tensors: dict name -> (np.ndarray float32, "F32" | "BF16")."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        arr, dtype = tensors[name]
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if dtype == "F32":
            raw = arr.astype("<f4").tobytes()
        elif dtype == "BF16":
            bits = arr.view(np.uint32)
            # Values were rounded to bf16 beforehand, so dropping the low half
            # is exact; check it rather than assume it.
            assert np.all(bits & 0xFFFF == 0), f"{name} is not bf16-exact"
            raw = (bits >> 16).astype("<u2").tobytes()
        else:
            raise ValueError(dtype)
        header[name] = {"dtype": dtype, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header["__metadata__"] = {"generator": "tests/golden/export_golden.py"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # align the data section to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


def to_f32(t):
    return t.detach().to(torch.float32).cpu().numpy()


# ---------------------------------------------------------------- masks

def mask_matrix(L, causal=False, window=0, edges=()):
    """Boolean [L, L], True = NOT allowed (PyTorch's attn_mask convention)."""
    i = torch.arange(L).view(L, 1)
    j = torch.arange(L).view(1, L)
    allowed = torch.ones(L, L, dtype=torch.bool)
    if causal:
        allowed &= j <= i
    if window > 0:
        allowed &= (i - j).abs() <= window
    if len(edges) > 0:
        listed = torch.zeros(L, L, dtype=torch.bool)
        for a, b in zip(edges[0::2], edges[1::2]):
            listed[a, b] = True
        allowed &= listed
    assert allowed.any(dim=1).all(), "a row with no allowed key (PyTorch gives NaN)"
    return ~allowed


def random_edges(L, gen, causal=False, window=0, max_per_row=4):
    """Flat (i, j) pairs; every row gets 1..max_per_row keys the other rules allow."""
    edges = []
    for i in range(L):
        cands = [j for j in range(L)
                 if (not causal or j <= i) and (window == 0 or abs(i - j) <= window)]
        n = 1 + int(torch.randint(0, min(max_per_row, len(cands)), (1,), generator=gen))
        pick = torch.randperm(len(cands), generator=gen)[:n].tolist()
        for k in sorted(pick):
            edges += [i, cands[k]]
    return edges


# ---------------------------------------------------------------- models

def sinusoidal(L, d):
    pe = torch.zeros(L, d, dtype=torch.float64)
    p = torch.arange(L, dtype=torch.float64).view(L, 1)
    two_i = torch.arange(0, d, 2, dtype=torch.float64)
    angle = p / torch.pow(torch.tensor(10000.0, dtype=torch.float64), two_i / d)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe


def rotate_half_split(x):
    """x: [H, L, dh] float64; rotary with base 10000, dim i pairs with i + dh/2."""
    _, L, dh = x.shape
    half = dh // 2
    theta = torch.pow(torch.tensor(10000.0, dtype=torch.float64),
                      -2.0 * torch.arange(half, dtype=torch.float64) / dh)
    angle = torch.arange(L, dtype=torch.float64).view(L, 1) * theta.view(1, half)
    cos, sin = torch.cos(angle), torch.sin(angle)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def manual_mha(mha, x, attn_mask, rotary):
    """Hand-written MHA in float64 from mha's weights. x: [L, d]. Returns
    (output [L, d], per-head weights [H, L, L])."""
    d, H = mha.embed_dim, mha.num_heads
    dh = d // H
    L = x.shape[0]
    w = mha.in_proj_weight
    b = mha.in_proj_bias if mha.in_proj_bias is not None else torch.zeros(3 * d, dtype=x.dtype)
    q = x @ w[:d].T + b[:d]
    k = x @ w[d:2 * d].T + b[d:2 * d]
    v = x @ w[2 * d:].T + b[2 * d:]
    q, k, v = (t.view(L, H, dh).transpose(0, 1) for t in (q, k, v))  # [H, L, dh]
    if rotary:
        q, k = rotate_half_split(q), rotate_half_split(k)
    scores = (q @ k.transpose(1, 2)) / math.sqrt(dh)
    scores = scores.masked_fill(attn_mask.view(1, L, L), float("-inf"))
    p = torch.softmax(scores, dim=-1)
    ctx = (p @ v).transpose(0, 1).reshape(L, d)
    out = ctx @ mha.out_proj.weight.T
    if mha.out_proj.bias is not None:
        out = out + mha.out_proj.bias
    return out, p


def make_mha(d, H, bias, bf16=False):
    """An nn.MultiheadAttention in float64 whose values are exactly the fp32
    (or bf16) values the weights file will hold."""
    mha = torch.nn.MultiheadAttention(d, H, bias=bias, batch_first=True)
    with torch.no_grad():
        if bias:  # PyTorch initializes biases to zero; make them matter
            mha.in_proj_bias.uniform_(-0.5, 0.5)
            mha.out_proj.bias.uniform_(-0.5, 0.5)
        if bf16:
            for prm in mha.parameters():
                prm.copy_(prm.to(torch.bfloat16).to(torch.float32))
    return mha.double().eval()  # fp32 values widen exactly


class Spec:
    """One model to export."""

    def __init__(self, name, d, H, positional, max_length, bias, separate=False,
                 bf16=False, seed=0):
        self.name, self.d, self.H = name, d, H
        self.positional, self.max_length = positional, max_length
        self.bias, self.separate, self.bf16, self.seed = bias, separate, bf16, seed


def weight_tensors(spec, mha, pos_emb):
    dt = "BF16" if spec.bf16 else "F32"
    d = spec.d
    t = {}
    w = mha.in_proj_weight
    if spec.separate:
        t["q_proj.weight"] = (to_f32(w[:d]), dt)
        t["k_proj.weight"] = (to_f32(w[d:2 * d]), dt)
        t["v_proj.weight"] = (to_f32(w[2 * d:]), dt)
        if spec.bias:
            b = mha.in_proj_bias
            t["q_proj.bias"] = (to_f32(b[:d]), dt)
            t["k_proj.bias"] = (to_f32(b[d:2 * d]), dt)
            t["v_proj.bias"] = (to_f32(b[2 * d:]), dt)
    else:
        t["in_proj_weight"] = (to_f32(w), dt)
        if spec.bias:
            t["in_proj_bias"] = (to_f32(mha.in_proj_bias), dt)
    t["out_proj.weight"] = (to_f32(mha.out_proj.weight), dt)
    if spec.bias:
        t["out_proj.bias"] = (to_f32(mha.out_proj.bias), dt)
    if pos_emb is not None:
        t["pos_embedding.weight"] = (to_f32(pos_emb), dt)
    return t


def reference(spec, mha, pos_emb, x, case):
    """x: [L, d] float64. Returns (output [L, d], per-head weights [H, L, L])."""
    L = x.shape[0]
    m = case["mask"]
    attn_mask = mask_matrix(L, m["causal"], m["window"], m["edges"])
    if spec.positional == "sinusoidal":
        x = x + sinusoidal(L, spec.d)
    elif spec.positional == "learned":
        x = x + pos_emb[:L]
    if spec.positional == "rotary":
        return manual_mha(mha, x, attn_mask, rotary=True)
    with torch.no_grad():
        out, w = mha(x.unsqueeze(0), x.unsqueeze(0), x.unsqueeze(0), attn_mask=attn_mask,
                     need_weights=True, average_attn_weights=False)
    return out[0], w[0]


def check_manual_path(mha, x, gen):
    """The hand-written path (no rotary) must equal nn.MultiheadAttention."""
    L = x.shape[0]
    for attn_mask in (mask_matrix(L), mask_matrix(L, causal=True, window=2),
                      mask_matrix(L, edges=random_edges(L, gen))):
        with torch.no_grad():
            ref_out, ref_w = mha(x.unsqueeze(0), x.unsqueeze(0), x.unsqueeze(0),
                                 attn_mask=attn_mask, need_weights=True,
                                 average_attn_weights=False)
            out, w = manual_mha(mha, x, attn_mask, rotary=False)
        assert (out - ref_out[0]).abs().max() < 1e-12, "manual MHA output differs"
        assert (w - ref_w[0]).abs().max() < 1e-12, "manual MHA weights differ"


def case(name, L, causal=False, window=0, edges=None, weights="none", pooling="none",
         gen=None):
    if edges == "random":
        edges = random_edges(L, gen, causal, window)
    return {"name": name, "length": L,
            "mask": {"causal": causal, "window": window, "edges": edges or []},
            "weights": weights, "pooling": pooling}


def plain_cases(gen):
    """Every mask kind x every weights mode, poolings rotated so each
    (weights, pooling) pair occurs; plus length-1 and longest cases."""
    masks = [("nomask", {}), ("causal", {"causal": True}), ("window2", {"window": 2}),
             ("edges", {"edges": "random"}), ("causal_window3", {"causal": True, "window": 3})]
    weights = ["none", "per_head", "mean"]
    poolings = ["none", "mean", "first"]
    lengths = [7, 12, 5, 16, 9, 3, 11, 8, 13, 6, 10, 4, 15, 2, 14]
    cases = []
    for mi, (mname, mkw) in enumerate(masks):
        for wi, w in enumerate(weights):
            p = poolings[(mi + wi) % 3]
            L = lengths[mi * 3 + wi]
            cases.append(case(f"{mname}_{w}_{p}_L{L}", L, weights=w, pooling=p, gen=gen, **mkw))
    cases += [
        case("L1_nomask_per_head_none", 1, weights="per_head"),
        case("L1_causal_mean_first", 1, causal=True, weights="mean", pooling="first"),
        case("L1_edges_per_head_mean", 1, edges=[0, 0], weights="per_head", pooling="mean"),
        case("L1_window1_none_none", 1, window=1),
        case("L24_causal_edges_per_head_none", 24, causal=True, edges="random",
             weights="per_head", gen=gen),
        case("L24_window30_mean_none", 24, window=30, weights="mean"),
    ]
    return cases


def small_cases(gen, longest):
    return [
        case("nomask_per_head_none_L10", 10, weights="per_head"),
        case("causal_mean_mean_L9", 9, causal=True, weights="mean", pooling="mean"),
        case("window1_none_first_L8", 8, window=1, pooling="first"),
        case("edges_per_head_none_L7", 7, edges="random", weights="per_head", gen=gen),
        case("causal_window2_per_head_mean_L12", 12, causal=True, window=2,
             weights="per_head", pooling="mean"),
        case("L1_nomask_mean_none", 1, weights="mean"),
        case(f"L{longest}_causal_none_none", longest, causal=True),
        case(f"L{longest}_window4_mean_first", longest, window=4, weights="mean",
             pooling="first"),
    ]


def export(spec):
    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed + 1000)
    mha = make_mha(spec.d, spec.H, spec.bias, spec.bf16)
    pos_emb = None
    if spec.positional == "learned":
        emb = torch.nn.Embedding(spec.max_length, spec.d)
        w = emb.weight.detach().to(torch.float32)
        if spec.bf16:
            w = w.to(torch.bfloat16).to(torch.float32)
        pos_emb = w.double()
    if spec.positional == "rotary" or spec.name == "mha_plain":
        check_manual_path(mha, torch.randn(11, spec.d, generator=gen).double(), gen)

    out_dir = os.path.join(DATA_DIR, spec.name)
    os.makedirs(out_dir, exist_ok=True)
    config = {"d_model": spec.d, "num_heads": spec.H, "positional": spec.positional,
              "max_length": spec.max_length, "relevance": "dot",
              "normalization": "softmax", "projections": True, "precision": "fp32"}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(out_dir, "weights.safetensors"),
                      weight_tensors(spec, mha, pos_emb))

    if spec.name == "mha_plain":
        cases = plain_cases(gen)
    else:
        cases = small_cases(gen, min(24, spec.max_length))
    tensors = {}
    for c in cases:
        L, n = c["length"], c["name"]
        assert L <= spec.max_length
        x = torch.randn(L, spec.d, generator=gen, dtype=torch.float32).double()
        out, w = reference(spec, mha, pos_emb, x, c)
        assert torch.isfinite(out).all() and torch.isfinite(w).all()
        if c["pooling"] == "mean":
            out = out.mean(dim=0, keepdim=True)
        elif c["pooling"] == "first":
            out = out[:1]
        c["input"], c["output"] = f"{n}/input", f"{n}/output"
        tensors[c["input"]] = (to_f32(x), "F32")
        tensors[c["output"]] = (to_f32(out), "F32")
        c["attention"] = None
        if c["weights"] == "per_head":
            c["attention"] = f"{n}/attention"
            tensors[c["attention"]] = (to_f32(w), "F32")
        elif c["weights"] == "mean":
            c["attention"] = f"{n}/attention"
            tensors[c["attention"]] = (to_f32(w.mean(dim=0, keepdim=True)), "F32")
        del c["length"]  # implied by the input's shape
    assert len({c["name"] for c in cases}) == len(cases), "duplicate case names"
    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump({"model": spec.name, "cases": cases}, f, indent=1)
        f.write("\n")
    write_safetensors(os.path.join(out_dir, "cases.safetensors"), tensors)
    print(f"{spec.name}: {len(cases)} cases")


SPECS = [
    Spec("mha_plain", 32, 4, "none", 4096, bias=True, seed=1),
    Spec("mha_sinusoidal_sep", 64, 8, "sinusoidal", 64, bias=False, separate=True, seed=2),
    Spec("mha_learned_bf16", 16, 2, "learned", 32, bias=True, bf16=True, seed=3),
    Spec("rotary_manual", 32, 4, "rotary", 64, bias=True, seed=4),
]

if __name__ == "__main__":
    torch.set_num_threads(1)  # bitwise-reproducible reductions
    for s in SPECS:
        export(s)
