#!/usr/bin/python3
"""attnserve's core_bench against PyTorch's nn.MultiheadAttention, one table.

Runs build/bench/core_bench --format json, then bench/torch_mha.py --format
json (one after the other, never together: they share the cores), and prints
per shape x precision x weights: attnserve's median ms and % of its roof,
PyTorch's best median ms and the thread configuration that gave it, the
speed-up (PyTorch ms / attnserve ms) and the peak extra memory of both; then
the issue's targets, each PASS or FAIL, next to the most any engine could
reach on this machine (the speed-up at 100% of the matching oneDNN roof,
plus the time to write the returned weights at the fresh-memory write rate):
a FAIL whose bound is below the target cannot be met here. With --breakdown,
also where attnserve's time goes, stage by stage (core_bench --breakdown).

  make bench-torch          # installs what it needs, builds, runs this
  OPENBLAS_CORETYPE=Cooperlake /usr/bin/python3 bench/compare_torch.py \\
      --core-bench build/bench/core_bench [--quick] [--filter L8192] [--breakdown]
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# (target text, row filter, value of a row, test on the value)
LARGEST = [(8, 512, 512, 8), (1, 2048, 1024, 16), (1, 8192, 512, 8)]
ALL = [(1, 128, 256, 8), (32, 128, 256, 8)] + LARGEST


def shape(r):
    return (r["batch"], r["length"], r["d_model"], r["heads"])


def roof_pct(r):
    return 100 * r["core"].get("roof_fraction", 0)


def speedup(r):
    return r.get("speedup", 0)


def mib(r):
    return r["core"].get("peak_extra_mib", float("inf"))


# Each: (name, precision, weights modes, shapes, value function, unit, need).
# A row passes when its value is >= need (<= for memory). % of roof targets
# are read on rows without weights (the per-head weights add L^2 writes that
# the FLOP count does not include); speed-up targets on both.
TARGETS = [
    ("fp32 >= 60% of the fp32 roof", "fp32", ["none"], [(8, 512, 512, 8), (1, 2048, 1024, 16)],
     roof_pct, "%", 60),
    ("fp32 >= 40% of the fp32 roof", "fp32", ["none"], [(32, 128, 256, 8)], roof_pct, "%", 40),
    ("fp32 >= 2x PyTorch fp32", "fp32", ["none", "per-head"], ALL, speedup, "x", 2),
    ("fp32 >= 3x PyTorch fp32 (three largest)", "fp32", ["none", "per-head"], LARGEST,
     speedup, "x", 3),
    ("bf16 >= 35% of the bf16 roof", "bf16", ["none"], [(8, 512, 512, 8), (1, 2048, 1024, 16)],
     roof_pct, "%", 35),
    ("bf16 >= 2x PyTorch bf16", "bf16", ["none", "per-head"], ALL, speedup, "x", 2),
    ("(1,8192,512,8) no weights <= 160 MiB extra", None, ["none"], [(1, 8192, 512, 8)],
     mib, " MiB", 160),
    ("(1,8192,512,8) no weights faster than PyTorch", None, ["none"], [(1, 8192, 512, 8)],
     speedup, "x", 1.0001),
]


def passes(value, unit, need):
    return value <= need if unit == " MiB" else value >= need


def run_json(cmd):
    print("compare_torch: running", " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"compare_torch: {cmd[0]} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout)


def key(r):
    return shape(r) + (r["precision"], r["weights"])


def bound_ms(r, core):
    """The least time any engine could take for row r here: its FLOPs at the
    matching oneDNN roof, plus writing the returned weights (per-head: B*H*L^2
    floats) at the fresh-memory write rate."""
    b, L, d, h = shape(r)
    roof = core["roofs"][r["precision"]].get("gflops", 0)
    write = core["roofs"].get("write", {}).get("gflops", 0)
    if roof <= 0:
        return None
    ms = (8 * b * L * d * d + 4 * b * L * L * d) / roof / 1e6
    if r["weights"] == "per-head":
        if write <= 0:
            return None
        ms += b * h * L * L * 4 / write / 1e6
    return ms


def merge(core, torch):
    torch_rows = {key(r): r for r in torch["rows"]}
    rows = []
    for c in core["rows"]:
        t = torch_rows.get(key(c), {})
        r = {"batch": c["batch"], "length": c["length"], "d_model": c["d_model"],
             "heads": c["heads"], "precision": c["precision"], "weights": c["weights"],
             "core": c, "torch": t}
        if "ms" in c and "ms" in t:
            r["speedup"] = t["ms"] / c["ms"]
        bound = bound_ms(r, core)
        if bound and "ms" in t:
            r["speedup_bound"] = t["ms"] / bound
        rows.append(r)
    return rows


def fmt(v, spec, missing="n/a"):
    return missing if v is None else format(v, spec)


def print_header(core, torch):
    print(f"attnserve core_bench vs PyTorch {torch['torch']} nn.MultiheadAttention, medians; "
          f"attnserve on {core['threads']} threads (oneDNN {core['onednn']}, ISA {core['isa']}), "
          "PyTorch best of 1 / 2 / 2p threads (2p: OMP_WAIT_POLICY=PASSIVE)")
    for p in ("fp32", "bf16"):
        roof = core["roofs"][p]
        print(f"roof {p}: oneDNN matmul 2048^3 = {roof.get('gflops', 0):.1f} GFLOP/s "
              f"({roof.get('impl', '?')})")
    write = core["roofs"].get("write", {})
    print(f"fresh-memory write (allocating and writing 1 GiB as returned weights are): "
          f"{write.get('gflops', 0):.1f} GB/s")
    blas = torch["blas"]
    print(f"PyTorch BLAS: {blas.get('openblas_config', blas['library'])}, fp32 matmul 1024^3 on "
          f"1 thread {blas['fp32_matmul_1024_1thread_gflops']:.1f} GFLOP/s")
    for w in blas["warnings"]:
        print("WARNING:", w)
    print(f"load average: core_bench {core['load_average_start']:.1f} -> "
          f"{core['load_average_end']:.1f}, torch_mha {torch['load_average_start']:.1f} -> "
          f"{torch['load_average_end']:.1f} (2 cores)")
    print("speed-up = PyTorch ms / attnserve ms; memory = peak extra RSS during the runs "
          "(outputs included)\n")


def print_rows(rows):
    print("| B | L | d_model | heads | precision | weights | attnserve ms | % of roof | "
          "PyTorch ms (threads) | speed-up | attnserve MiB | PyTorch MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c, t = r["core"], r["torch"]
        torch_ms = (f"{t['ms']:.2f} ({t['threads']})" if "ms" in t
                    else t.get("error", "not run"))
        print(f"| {r['batch']} | {r['length']} | {r['d_model']} | {r['heads']} | "
              f"{r['precision']} | {r['weights']} | {fmt(c.get('ms'), '.2f', c.get('error'))} | "
              f"{fmt(c.get('roof_fraction') and 100 * c['roof_fraction'], '.0f')}% | "
              f"{torch_ms} | {fmt(r.get('speedup'), '.1f')}x | "
              f"{fmt(c.get('peak_extra_mib'), '.1f')} | {fmt(t.get('peak_extra_mib'), '.1f')} |")


def print_targets(rows):
    print("\nbound = for speed-ups, PyTorch ms over the least time any engine could take here "
          "(FLOPs at 100% of the roof, plus the returned weights at the write rate); for % of "
          "roof, 100%.\n")
    print("| target | row | value | bound | result |")
    print("|---|---|---|---|---|")
    failed = 0
    for name, precision, weights, shapes, value, unit, need in TARGETS:
        for r in rows:
            if (shape(r) not in shapes or r["weights"] not in weights
                    or (precision and r["precision"] != precision)):
                continue
            if "ms" not in r["core"] or (unit == "x" and "speedup" not in r):
                print(f"| {name} | {key_text(r)} | n/a | | NOT MEASURED |")
                continue
            v = value(r)
            ok = passes(v, unit, need)
            failed += not ok
            bound = (fmt(r.get("speedup_bound"), ".1f") + "x" if unit == "x"
                     else "100%" if unit == "%" else "")
            verdict = "PASS" if ok else "FAIL"
            if not ok and unit == "x" and r.get("speedup_bound", 1e9) < need:
                verdict = "FAIL (above the bound)"
            print(f"| {name} | {key_text(r)} | {v:.1f}{unit} | {bound} | {verdict} |")
    return failed


def print_breakdown(rows):
    print("\nWhere attnserve's time goes (core_bench --breakdown): mean ms per run, "
          "(GFLOP/s) for the matmuls; the attention steps as thread-seconds / threads.\n")
    print("| B | L | d_model | heads | precision | weights | total ms | Q,K,V projection | QK^T "
          "| mask+softmax | PV | weights out | idle | output projection | pack etc. |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b = r["core"].get("breakdown")
        if not b:
            continue
        B, L, d, _ = shape(r)
        cells = []
        for stage in ("qkv_projection", "scores", "normalize", "context", "weights_out",
                      "attention_idle", "out_projection"):
            ms, gflops = b.get(stage, 0), b.get("gflops", {}).get(stage, 0)
            cells.append(f"{ms:.2f} ({gflops:.0f})" if gflops > 0 else f"{ms:.2f}")
        other = b.get("pack", 0) + b.get("unpack", 0) + b.get("other", 0)
        print(f"| {B} | {L} | {d} | {r['heads']} | {r['precision']} | {r['weights']} | "
              f"{b.get('total', 0):.2f} | " + " | ".join(cells) + f" | {other:.2f} |")


def key_text(r):
    return f"({r['batch']},{r['length']},{r['d_model']},{r['heads']}) {r['precision']} {r['weights']}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--core-bench", default=os.path.join(HERE, "..", "build", "bench", "core_bench"))
    p.add_argument("--quick", action="store_true", help="both benchmarks in their quick mode")
    p.add_argument("--filter", default="", help="only rows whose name contains this")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--breakdown", action="store_true",
                   help="also time attnserve's stages (core_bench --breakdown)")
    args = p.parse_args()
    extra = (["--quick"] if args.quick else []) + (["--filter", args.filter] if args.filter else [])
    core = run_json([args.core_bench, "--format", "json"] + extra
                    + (["--breakdown"] if args.breakdown else []))
    os.environ.setdefault("OPENBLAS_CORETYPE", "Cooperlake")
    torch = run_json(["/usr/bin/python3", os.path.join(HERE, "torch_mha.py"), "--format", "json"]
                     + extra)
    rows = merge(core, torch)
    if args.format == "json":
        print(json.dumps({"core_bench": core, "torch_mha": torch, "rows": rows}, indent=2))
        return
    print_header(core, torch)
    print_rows(rows)
    if args.breakdown:
        print_breakdown(rows)
    failed = print_targets(rows)
    print(f"\n{failed} target row(s) failed" if failed else "\nevery measured target passed")


if __name__ == "__main__":
    main()
