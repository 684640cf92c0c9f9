#!/usr/bin/python3
"""PyTorch's nn.MultiheadAttention on core_bench's rows, for comparison.

The same five shapes (B, L, d_model, heads), fp32 and bf16 (mha.to(bfloat16)),
without weights (need_weights=False) and with per-head weights
(need_weights=True, average_attn_weights=False). The module is built with
batch_first=True and called as self-attention mha(x, x, x) in eval() under
torch.inference_mode(), i.e. the way PyTorch runs it fastest (its fused
"fast path" when the inputs allow it). Each row runs at 1 thread, at 2 threads,
and at 2 threads with OMP_WAIT_POLICY=PASSIVE ("2p"), each in a fresh child
process (torch.set_num_threads and OpenBLAS's own thread count); the best is
taken. "2p" is there because torch's OpenMP workers spin after each parallel
region and take the core from OpenBLAS's pthreads, which made some 2-thread
runs slower than 1 thread.

Columns as core_bench's: median ms of one batch (one warm-up run, then at
least --runs runs and --min-time seconds), GFLOP/s with FLOPs = 8*B*L*d^2 +
4*B*L^2*d, and peak extra memory: peak RSS during the runs minus RSS once the
module and input exist (free heap returned with malloc_trim, VmHWM reset via
/proc/self/clear_refs, read from /proc/self/status).

Debian's python3-torch links the generic libblas.so.3, which is the reference
BLAS unless libopenblas0-pthread is installed (`make deps-bench`). OpenBLAS
0.3.21 does not recognise this CPU and picks SSE3 kernels unless
OPENBLAS_CORETYPE names one (this script defaults it to Cooperlake). The
script prints which BLAS is loaded and warns when it is not a fast OpenBLAS.

  /usr/bin/python3 bench/torch_mha.py [--quick] [--filter L8192] [--format json]
"""

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time

# Read by OpenBLAS when it loads (with torch), so set before the import.
os.environ.setdefault("OPENBLAS_CORETYPE", "Cooperlake")

import torch  # noqa: E402

SHAPES = [(1, 128, 256, 8), (32, 128, 256, 8), (8, 512, 512, 8),
          (1, 2048, 1024, 16), (1, 8192, 512, 8)]
MIB = 1024.0 * 1024.0
# Below this a 1024^3 fp32 matmul on one thread is not an optimized BLAS.
MIN_BLAS_GFLOPS = 20.0


def flops(b, l, d):
    """Projections 8*B*L*d^2 plus Q.K^T and P.V over the full L^2: 4*B*L^2*d."""
    return 8 * b * l * d * d + 4 * b * l * l * d


def row_name(shape, precision, weights):
    b, l, d, h = shape
    return f"B{b}_L{l}_d{d}_h{h}/{precision}/{weights}"


def status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class PeakMemoryWindow:
    """Peak RSS above the RSS at construction (same method as core_bench)."""

    def __init__(self):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset_ok = True
        except OSError:
            self.reset_ok = False
        self.baseline = status_bytes("VmRSS")

    def peak_extra_bytes(self):
        return max(0, status_bytes("VmHWM") - self.baseline)


def memory_check(mib=256):
    """The method on a known amount: after an earlier 2N MiB peak (freed),
    touching and freeing N MiB inside a window must read as ~N MiB."""
    torch.ones(2 * mib * 1024 * 1024, dtype=torch.uint8)
    window = PeakMemoryWindow()
    torch.ones(mib * 1024 * 1024, dtype=torch.uint8)
    return {"touched_mib": mib, "peak_extra_mib": window.peak_extra_bytes() / MIB,
            "memory_reset_ok": window.reset_ok}


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def sgemm_provider():
    """The file whose sgemm_ libtorch_cpu calls: dlsym in libtorch_cpu's own
    scope (where its BLAS calls resolve), then dladdr. Looking for a mapped
    libopenblas is not enough: liblapack.so.3 may map it while libblas.so.3
    is still the reference BLAS."""
    torch_cpu = next((line.split()[-1] for line in open("/proc/self/maps")
                      if "libtorch_cpu.so" in line), None)
    if torch_cpu is None:
        return None
    try:
        addr = ctypes.cast(ctypes.CDLL(torch_cpu).sgemm_, ctypes.c_void_p).value
    except AttributeError:
        return None
    libc = ctypes.CDLL("libc.so.6")
    libc.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    info = _DlInfo()
    if not libc.dladdr(addr, ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.path.realpath(info.dli_fname.decode())


def openblas_lib():
    """The OpenBLAS that provides torch's sgemm_, or None if it is not OpenBLAS."""
    path = sgemm_provider()
    if path is None or "openblas" not in path:
        return None
    lib = ctypes.CDLL(path)  # already loaded: the same handle torch uses
    return lib if hasattr(lib, "openblas_get_config") else None


def set_threads(n):
    torch.set_num_threads(n)
    lib = openblas_lib()
    if lib is not None:  # OpenBLAS's pthreads pool ignores torch's setting
        lib.openblas_set_num_threads(n)


def blas_report():
    """Which BLAS torch uses and how fast it is; 'warnings' lists problems."""
    a = torch.rand(1024, 1024)
    a @ a  # loads and initializes the BLAS
    info = {"library": sgemm_provider(),
            "openblas_coretype_env": os.environ.get("OPENBLAS_CORETYPE"),
            "alternative": os.path.realpath("/usr/lib/x86_64-linux-gnu/libblas.so.3")}
    lib = openblas_lib()
    if lib is not None:
        lib.openblas_get_config.restype = ctypes.c_char_p
        lib.openblas_get_corename.restype = ctypes.c_char_p
        info["openblas_config"] = lib.openblas_get_config().decode()
        info["openblas_core"] = lib.openblas_get_corename().decode()
    set_threads(1)
    start = time.perf_counter()
    for _ in range(5):
        a @ a
    info["fp32_matmul_1024_1thread_gflops"] = 5 * 2 * 1024**3 / (time.perf_counter() - start) / 1e9
    warnings = []
    if lib is None:
        warnings.append(f"PyTorch is not using OpenBLAS (its sgemm_ is in {info['library']}); "
                        "fp32 runs on a slow BLAS: install libopenblas0-pthread (make deps-bench)")
    elif info["openblas_core"].lower() in ("prescott", "core2", "nehalem", "katmai", "sandybridge"):
        warnings.append(f"OpenBLAS uses {info['openblas_core']} kernels; set "
                        "OPENBLAS_CORETYPE=Cooperlake (or SkylakeX) for AVX-512")
    if info["fp32_matmul_1024_1thread_gflops"] < MIN_BLAS_GFLOPS:
        warnings.append(f"fp32 matmul reaches only {info['fp32_matmul_1024_1thread_gflops']:.1f} "
                        "GFLOP/s on 1 thread: not an optimized BLAS (or a very busy machine)")
    info["warnings"] = warnings
    return info


def median_seconds(fn, runs, min_time):
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


def run_row(shape, precision, weights, threads, runs, min_time):
    """One row at one thread count, in this process."""
    b, l, d, h = shape
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(0)
    set_threads(threads)
    mha = torch.nn.MultiheadAttention(d, h, batch_first=True).eval().to(dtype)
    x = (torch.rand(b, l, d) * 2 - 1).to(dtype)
    per_head = weights == "per-head"
    with torch.inference_mode():
        window = PeakMemoryWindow()
        seconds, n = median_seconds(
            lambda: mha(x, x, x, need_weights=per_head, average_attn_weights=False),
            runs, min_time)
        peak = window.peak_extra_bytes()
    return {"name": row_name(shape, precision, weights), "threads": threads,
            "ms": seconds * 1e3, "runs": n, "gflops": flops(b, l, d) / seconds / 1e9,
            "peak_extra_mib": peak / MIB, "memory_reset_ok": window.reset_ok}


def load_average():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def run_in_child(spec, config, args):
    """One row at one thread configuration ("1", "2", "2p" = 2 + passive OpenMP waits)."""
    threads = int(config.rstrip("p"))
    env = dict(os.environ)
    if config.endswith("p"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    cmd = [sys.executable, os.path.abspath(__file__), "--run-row", spec,
           "--threads", str(threads), "--runs", str(args.runs), "--min-time", str(args.min_time)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    lines = [s for s in proc.stdout.splitlines() if s.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"threads": config, "error": f"child exited with {proc.returncode}"}
    r = json.loads(lines[-1])
    r["threads"] = config
    return r


def run_all(args):
    result = {"torch": torch.__version__, "blas": blas_report(), "rows": [],
              "memory_check": memory_check(),
              "load_average_start": load_average()}
    for w in result["blas"]["warnings"]:
        print("torch_mha: WARNING:", w, file=sys.stderr)
    configs = args.threads.split(",")
    for shape in SHAPES:
        for precision in ("fp32", "bf16"):
            for weights in ("none", "per-head"):
                name = row_name(shape, precision, weights)
                if args.filter and args.filter not in name:
                    continue
                spec = f"{','.join(map(str, shape))}:{precision}:{weights}"
                by_threads = {}
                for t in configs:
                    print(f"torch_mha: {name} threads={t} ...", file=sys.stderr, flush=True)
                    by_threads[t] = run_in_child(spec, t, args)
                ok = [r for r in by_threads.values() if "ms" in r]
                row = {"batch": shape[0], "length": shape[1], "d_model": shape[2],
                       "heads": shape[3], "precision": precision, "weights": weights,
                       "name": name, "by_threads": by_threads}
                if ok:
                    best = min(ok, key=lambda r: r["ms"])
                    row.update({k: best[k] for k in ("ms", "threads", "gflops", "peak_extra_mib")})
                else:
                    row["error"] = "; ".join(r.get("error", "?") for r in by_threads.values())
                result["rows"].append(row)
    result["load_average_end"] = load_average()
    return result


def print_table(result, thread_counts):
    blas = result["blas"]
    print(f"PyTorch {result['torch']} nn.MultiheadAttention (batch_first, eval, inference_mode, "
          f"self-attention), medians, best of threads {'/'.join(thread_counts)} "
          f"(2p = 2 with OMP_WAIT_POLICY=PASSIVE); load average {result['load_average_start']:.1f} "
          f"at start, {result['load_average_end']:.1f} at end")
    print(f"BLAS: {blas['library']} ({blas.get('openblas_config', 'not OpenBLAS')}); "
          f"fp32 matmul 1024^3 on 1 thread: {blas['fp32_matmul_1024_1thread_gflops']:.1f} GFLOP/s")
    for w in blas["warnings"]:
        print("WARNING:", w)
    check = result["memory_check"]
    print("FLOPs per batch = 8*B*L*d^2 + 4*B*L^2*d; peak extra memory: peak RSS during the runs "
          "minus RSS with module and input (check: after a {} MiB peak, touching {} MiB measures "
          "{:.1f} MiB{})\n".format(2 * check["touched_mib"], check["touched_mib"],
                                   check["peak_extra_mib"],
                                   "" if check["memory_reset_ok"] else "; VmHWM reset FAILED"))
    cols = " | ".join(f"ms ({t} thr)" for t in thread_counts)
    print(f"| B | L | d_model | heads | precision | weights | {cols} | best ms | GFLOP/s | "
          "peak extra MiB |")
    print("|" + "---|" * (9 + len(thread_counts)))
    for r in result["rows"]:
        times = " | ".join(f"{r['by_threads'][t]['ms']:.2f}" if "ms" in r["by_threads"][t]
                           else "failed" for t in thread_counts)
        head = (f"| {r['batch']} | {r['length']} | {r['d_model']} | {r['heads']} | "
                f"{r['precision']} | {r['weights']} | {times} |")
        if "ms" not in r:
            print(f"{head} failed | | |")
            continue
        print(f"{head} {r['ms']:.2f} | {r['gflops']:.1f} | {r['peak_extra_mib']:.1f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--quick", action="store_true", help="3 runs, 0.1 s per row and thread count")
    p.add_argument("--filter", default="", help="only rows whose name contains this")
    p.add_argument("--threads", default="1,2,2p",
                   help="thread configurations to try (2p: 2 with OMP_WAIT_POLICY=PASSIVE); "
                        "the best is taken")
    p.add_argument("--runs", type=int, default=5, help="timed runs per row, at least")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds of timed runs, at least")
    p.add_argument("--run-row", help=argparse.SUPPRESS)  # internal: B,L,d,h:precision:weights
    args = p.parse_args()
    if args.run_row:
        dims, precision, weights = args.run_row.split(":")
        shape = tuple(int(v) for v in dims.split(","))
        print(json.dumps(run_row(shape, precision, weights, int(args.threads.rstrip("p")), args.runs,
                                 args.min_time)))
        return
    if args.quick:
        args.runs, args.min_time = 3, 0.1
    result = run_all(args)
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        print_table(result, args.threads.split(","))


if __name__ == "__main__":
    main()
