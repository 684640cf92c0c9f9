#!/usr/bin/env python3
"""Prints one line per ghz JSON report (`--format json`): requests, rate,
latency percentiles and status codes.

  python3 report.py reports/*/small.json ...

ghz reports durations in nanoseconds; `count` includes failed calls, and
`rps` is count / total (the whole run, failures included).
"""
import json
import sys


def summarize(path):
    with open(path) as f:
        r = json.load(f)
    pct = {p["percentage"]: p["latency"] / 1e6 for p in r.get("latencyDistribution") or []}
    codes = r.get("statusCodeDistribution") or {}
    ok = codes.get("OK", 0)
    return {
        "report": path,
        "name": r.get("name", ""),
        "requests": r["count"],
        "ok": ok,
        "rps": r["rps"],
        "ok_rps": ok / (r["total"] / 1e9) if r["total"] else 0.0,
        "mean_ms": r["average"] / 1e6,
        "p50_ms": pct.get(50),
        "p95_ms": pct.get(95),
        "p99_ms": pct.get(99),
        "codes": codes,
        "errors": r.get("errorDistribution") or {},
    }


def fmt(value):
    return "-" if value is None else f"{value:.2f}"


def main(paths):
    if not paths:
        sys.exit(__doc__)
    print("| report | requests | OK | req/s | mean ms | p50 ms | p95 ms | p99 ms | codes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        s = summarize(path)
        codes = " ".join(f"{k}:{v}" for k, v in sorted(s["codes"].items()))
        print(f"| {path} | {s['requests']} | {s['ok']} | {s['rps']:.1f} | {fmt(s['mean_ms'])} "
              f"| {fmt(s['p50_ms'])} | {fmt(s['p95_ms'])} | {fmt(s['p99_ms'])} | {codes} |")
        for message, count in sorted(s["errors"].items(), key=lambda e: -e[1])[:5]:
            print(f"    {count} x {message}")


if __name__ == "__main__":
    main(sys.argv[1:])
