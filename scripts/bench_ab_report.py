"""Summarises scripts/bench-ab's results: medians per path and binary, and
the ratios of this checkout (new) to REV (base).

    bench_ab_report.py RESULTS.jsonl REV ROUNDS CALLS CONCURRENCY

Ratios: p50 new/base (below 1 is faster), calls/s new/base (above 1 is
faster), idle RSS new/base (below 1 is smaller).
"""

import json
import statistics
import sys

PATHS = [
    ("echo", "echo builtin"),
    ("gateway", "bare current-thread echo through warden"),
    ("everything", "server-everything through warden"),
    ("command", "command tool running /bin/true"),
]


def main():
    path, rev, rounds, calls, conc = sys.argv[1:6]
    runs = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                runs.setdefault(r["name"], []).append(r)

    def med(name, get):
        values = [get(r) for r in runs.get(name, [])]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def ratio(a, b):
        return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}×"

    def num(v, spec):
        return "–" if v is None else spec.format(v)

    print(f"A/B against {rev}: medians of {rounds} rounds of {calls} calls, "
          f"sequential and {conc} in flight, both binaries in one run.\n")
    print("| path | seq p50 µs base → new | ratio | calls/s at "
          f"{conc} base → new | ratio | idle RSS MiB base → new | ready ms base → new |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for key, what in PATHS:
        b, n = f"{key}/base", f"{key}/new"
        if b not in runs or n not in runs:
            continue
        p50 = lambda r: r["seq"]["p50_us"]
        rate = lambda r: r["conc"]["calls_per_s"]
        rss = lambda r: r["rss_idle_kib"] / 1024 if r["rss_idle_kib"] else None
        ready = lambda r: r["ready_ms"]
        print(
            f"| {what} | {num(med(b, p50), '{:.0f}')} → {num(med(n, p50), '{:.0f}')} "
            f"| {ratio(med(n, p50), med(b, p50))} "
            f"| {num(med(b, rate), '{:,.0f}')} → {num(med(n, rate), '{:,.0f}')} "
            f"| {ratio(med(n, rate), med(b, rate))} "
            f"| {num(med(b, rss), '{:.1f}')} → {num(med(n, rss), '{:.1f}')} "
            f"| {num(med(b, ready), '{:.1f}')} → {num(med(n, ready), '{:.1f}')} |"
        )
    print("\nSequential calls/s and 32-in-flight p50, for the record:\n")
    print("| path | seq calls/s base → new | conc p50 µs base → new |")
    print("|---|---:|---:|")
    for key, what in PATHS:
        b, n = f"{key}/base", f"{key}/new"
        if b not in runs or n not in runs:
            continue
        srate = lambda r: r["seq"]["calls_per_s"]
        cp50 = lambda r: r["conc"]["p50_us"]
        print(
            f"| {what} | {num(med(b, srate), '{:,.0f}')} → {num(med(n, srate), '{:,.0f}')} "
            f"| {num(med(b, cp50), '{:.0f}')} → {num(med(n, cp50), '{:.0f}')} |"
        )


if __name__ == "__main__":
    main()
