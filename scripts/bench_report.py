"""Summarises scripts/bench's results (one JSON line per warden-bench run).

    bench_report.py RESULTS.jsonl ROUNDS CALLS CONCURRENCY [--write BENCHMARKS.md] [--plot BENCHMARKS.png]

Prints Markdown tables of the medians across rounds: warden against the bare
rmcp echo, the gateway pairs, and every peer with its ratios to the bare rmcp
baseline. With --write, replaces the part of BENCHMARKS.md between
`<!-- bench:begin -->` and `<!-- bench:end -->` with them; with --plot, draws
the peers as a PNG (needs matplotlib; scripts/bench installs it in a venv).
"""

import datetime
import io
import json
import os
import statistics
import sys

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

# Every server scripts/bench may run, in the order of the peers table, with
# what it is.
PEERS = [
    ("bare", "bare rmcp echo (multi-thread runtime): the baseline"),
    ("bare-ct", "bare rmcp echo, current-thread runtime"),
    ("warden", "warden, builtin echo"),
    ("warden-2t", "warden, builtin echo, 2 runtime threads"),
    ("python", "Python `mcp` SDK echo server"),
    ("everything", "server-everything (node), echo"),
    ("bare-ct-proxy", "bare-ct through warden (`kind = \"mcp\"`)"),
    ("everything-proxy", "server-everything through warden"),
    ("cmd-true", "warden command tool running /bin/true"),
    ("spawn-true", "raw spawn loop of /bin/true (tokio)"),
    ("bare-http", "bare rmcp echo over Streamable HTTP (current-thread, TCP_NODELAY)"),
    ("bare-http-mt", "the same on the multi-thread runtime"),
    ("bare-http-2026", "the same, stateless 2026-07-28 requests"),
    ("warden-http-1t", "warden serve --http, builtin echo, 1 runtime thread"),
    ("warden-http", "warden serve --http, builtin echo (default: a thread per core)"),
    ("warden-http-2026", "the same, stateless 2026-07-28 requests"),
    ("warden-http-noauth", "warden serve --http, builtin echo, [auth] off (paired with the next)"),
    ("warden-http-jwt", "the same with [auth] mode = \"jwt\", an ES256 token on every request"),
    ("gw-warden", "bare-ct (stdio) served over HTTP by warden (`prefix = \"\"`)"),
    ("bare-http-direct", "bare rmcp HTTP echo (current-thread), called directly (paired with the next)"),
    ("gw-remote", "the same echo reached by warden serve --http as a remote server (`url`, `prefix = \"\"`)"),
    ("gw-supergateway", "bare-ct served over HTTP by supergateway 4.0.0 --stateful"),
    ("gw-mcp-proxy", "bare-ct served over HTTP by mcp-proxy 0.13.0"),
]


def is_warden(name):
    """Whether warden serves (or fronts) this entry of PEERS."""
    return name.startswith("warden") or name in (
        "bare-ct-proxy", "everything-proxy", "cmd-true", "gw-warden", "gw-remote")


def load(path):
    runs = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                runs.setdefault(r["name"], []).append(r)
    return runs


def med(runs, name, get):
    values = [get(r) for r in runs[name]]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec):
    return "–" if v is None else spec.format(v)


SEQ_P50 = lambda r: r["seq"]["p50_us"]
CONC_P50 = lambda r: r["conc"]["p50_us"]
SEQ_RATE = lambda r: r["seq"]["calls_per_s"]
CONC_RATE = lambda r: r["conc"]["calls_per_s"]


def tree_mib(r):
    return None if r.get("tree_rss_idle_kib") is None else r["tree_rss_idle_kib"] / 1024


def report(runs, rounds, calls, concurrency):
    out = io.StringIO()
    p = lambda *a: print(*a, file=out)
    p(f"Medians of {rounds} rounds; {calls} calls each way, concurrency {concurrency}.")
    p()
    metrics = [
        ("seq p50 (µs)", SEQ_P50, "{:.0f}"),
        ("seq p99 (µs)", lambda r: r["seq"]["p99_us"], "{:.0f}"),
        ("seq calls/s", SEQ_RATE, "{:.0f}"),
        ("conc p50 (µs)", CONC_P50, "{:.0f}"),
        ("conc p99 (µs)", lambda r: r["conc"]["p99_us"], "{:.0f}"),
        ("conc calls/s", CONC_RATE, "{:.0f}"),
        ("idle RSS (MiB)", tree_mib, "{:.1f}"),
        ("ready (ms)", lambda r: r["ready_ms"], "{:.1f}"),
        ("first answer (ms)", lambda r: r["first_call_ms"], "{:.0f}"),
    ]
    p("### Peers, side by side")
    p()
    p("Idle RSS is the server's whole process tree (warden with its MCP child, node")
    p("with its own). Ratios are to `bare`, the rmcp echo: p50 lower is better,")
    p("calls/s higher is better.")
    p()
    p("| server | " + " | ".join(m[0] for m in metrics) + " | seq p50 × bare | conc calls/s × bare |")
    p("|---|" + "---:|" * (len(metrics) + 2))
    for name, what in PEERS:
        if name not in runs:
            continue
        cells = [fmt(med(runs, name, get), spec) for _, get, spec in metrics]
        ratios = [
            med(runs, name, SEQ_P50) / med(runs, "bare", SEQ_P50),
            med(runs, name, CONC_RATE) / med(runs, "bare", CONC_RATE),
        ] if "bare" in runs else [None, None]
        p(f"| {name}: {what} | " + " | ".join(cells) + " | "
          + " | ".join("–" if x is None else f"{x:.2f}×" for x in ratios) + " |")
    p()

    def ratio(get, base, name):
        return med(runs, name, get) / med(runs, base, get)

    if "bare" in runs and "warden" in runs:
        p("### warden against the bare rmcp echo")
        p()
        p("| ratio | seq p50 | conc p50 | seq calls/s | conc calls/s |")
        p("|---|---:|---:|---:|---:|")
        for name, base in (("warden", "bare"), ("warden", "bare-ct"), ("warden-2t", "bare"), ("warden-2t", "warden")):
            if name not in runs or base not in runs:
                continue
            cells = [ratio(g, base, name) for g in (SEQ_P50, CONC_P50, SEQ_RATE, CONC_RATE)]
            p(f"| {name} / {base} | " + " | ".join(f"{c:.2f}×" for c in cells) + " |")
        p()
        seq_p50, conc_p50 = ratio(SEQ_P50, "bare", "warden"), ratio(CONC_P50, "bare", "warden")
        seq_rate, conc_rate = ratio(SEQ_RATE, "bare", "warden"), ratio(CONC_RATE, "bare", "warden")
        rss = med(runs, "warden", lambda r: r["rss_idle_kib"] / 1024)
        ready = med(runs, "warden", lambda r: r["ready_ms"])
        # Issue 20's targets.
        checks = [
            (f"p50 ≤ 1.1× bare (seq {seq_p50:.2f}×, conc {conc_p50:.2f}×)", seq_p50 <= 1.1 and conc_p50 <= 1.1),
            (f"calls/s ≥ 0.9× bare (seq {seq_rate:.2f}×, conc {conc_rate:.2f}×)", seq_rate >= 0.9 and conc_rate >= 0.9),
            (f"warden idle RSS ≤ 10 MiB ({rss:.1f} MiB)", rss <= 10),
            (f"ready ≤ 10 ms ({ready:.1f} ms)", ready <= 10),
        ]
        p("Targets (against bare) " + ("hold" if all(ok for _, ok in checks) else "do NOT hold") + ": "
          + "; ".join(("✓ " if ok else "✗ ") + text for text, ok in checks) + ".")

    # bare-ct-direct is bare-ct again, measured back to back with its proxy.
    pairs = [(d, x) for d, x in (("bare-ct-direct", "bare-ct-proxy"), ("everything", "everything-proxy"),
                                 ("spawn-true", "cmd-true")) if d in runs and x in runs]
    if pairs:
        p()
        p("### Through warden against direct")
        p()
        p("| pair | seq p50 added (µs) | conc p50 added (µs) | seq calls/s | conc calls/s |")
        p("|---|---:|---:|---:|---:|")
        for d, x in pairs:
            added_seq = med(runs, x, SEQ_P50) - med(runs, d, SEQ_P50)
            added_conc = med(runs, x, CONC_P50) - med(runs, d, CONC_P50)
            p(f"| {x} vs {d} | {added_seq:.0f} | {added_conc:.0f} | "
              f"{ratio(SEQ_RATE, d, x):.2f}× | {ratio(CONC_RATE, d, x):.2f}× |")
        if ("spawn-true", "cmd-true") in pairs:
            rates = [ratio(g, "spawn-true", "cmd-true") for g in (SEQ_RATE, CONC_RATE)]
            p()
            p("Command tool target (issue 20): " + ("✓" if min(rates) >= 0.8 else "✗")
              + f" calls/s ≥ 0.8× the raw spawn loop (seq {rates[0]:.2f}×, conc {rates[1]:.2f}×).")
        if ("everything", "everything-proxy") in pairs:
            added = med(runs, "everything-proxy", SEQ_P50) - med(runs, "everything", SEQ_P50)
            rates = [ratio(g, "everything", "everything-proxy") for g in (SEQ_RATE, CONC_RATE)]
            ok = [(f"p50 added ≤ 60 µs ({added:.0f} µs)", added <= 60),
                  (f"calls/s ≥ 0.9× direct (seq {rates[0]:.2f}×, conc {rates[1]:.2f}×)", min(rates) >= 0.9)]
            p()
            p("Gateway targets (issue 20, server-everything) " + ("hold" if all(o for _, o in ok) else "do NOT hold")
              + ": " + "; ".join(("✓ " if o else "✗ ") + t for t, o in ok) + ".")
    http_section(runs, p, ratio)
    return out.getvalue()


def http_section(runs, p, ratio):
    pairs = (("warden-http-1t", "bare-http"), ("warden-http", "bare-http-mt"),
             ("warden-http-2026", "bare-http-2026"), ("warden-http", "warden-http-1t"),
             ("warden-http-jwt", "warden-http-noauth"), ("gw-remote", "bare-http-direct"))
    http = [(w, b) for w, b in pairs if w in runs and b in runs]
    if http:
        p()
        p("### Over Streamable HTTP (one POST per call: in a 2025-11-25 session, or stateless)")
        p()
        p("| ratio | seq p50 | conc p50 | seq calls/s | conc calls/s |")
        p("|---|---:|---:|---:|---:|")
        for w, b in http:
            cells = [ratio(g, b, w) for g in (SEQ_P50, CONC_P50, SEQ_RATE, CONC_RATE)]
            p(f"| {w} / {b} | " + " | ".join(f"{c:.2f}×" for c in cells) + " |")
        if ("gw-remote", "bare-http-direct") in http:
            added = med(runs, "gw-remote", SEQ_P50) - med(runs, "bare-http-direct", SEQ_P50)
            p()
            p(f"warden's remote hop (HTTP in, HTTP out) adds {added:.0f} µs to the p50 one at a time "
              f"and keeps {ratio(CONC_RATE, 'bare-http-direct', 'gw-remote'):.2f}× of the direct calls/s "
              "at 32 in flight (issue 17).")
        if ("warden-http-jwt", "warden-http-noauth") in http:
            added = med(runs, "warden-http-jwt", SEQ_P50) - med(runs, "warden-http-noauth", SEQ_P50)
            p()
            p(f"A JWT on every request (checked once, then remembered) adds {added:.0f} µs to the "
              "p50 one at a time (issue 16's target: under 10 µs).")
        for w, b in [x for x in http if x[1].startswith("bare") and x[0] != "gw-remote"]:
            p50 = ratio(SEQ_P50, b, w)
            rates = [ratio(g, b, w) for g in (SEQ_RATE, CONC_RATE)]
            ok = [(f"p50 ≤ 1.2× (seq {p50:.2f}×)", p50 <= 1.2),
                  (f"calls/s ≥ 0.8× (seq {rates[0]:.2f}×, conc {rates[1]:.2f}×)", min(rates) >= 0.8)]
            p()
            p(f"HTTP targets (issue 15), {w} against {b}: " + ("hold" if all(o for _, o in ok) else "do NOT hold")
              + ": " + "; ".join(("✓ " if o else "✗ ") + t for t, o in ok) + ".")
    peers = [n for n in ("gw-supergateway", "gw-mcp-proxy") if n in runs]
    if "gw-warden" in runs and peers:
        p()
        p("### A stdio server over HTTP: warden against supergateway and mcp-proxy")
        p()
        p("The same bare current-thread echo behind each; memory is the whole tree, idle.")
        p()
        p("| warden against | seq p50 | seq calls/s | conc calls/s | idle tree RSS |")
        p("|---|---:|---:|---:|---:|")
        checks = []
        for n in peers:
            p50 = ratio(SEQ_P50, n, "gw-warden")
            seq = ratio(SEQ_RATE, n, "gw-warden")
            conc = ratio(CONC_RATE, n, "gw-warden")
            mem = med(runs, "gw-warden", tree_mib) / med(runs, n, tree_mib)
            p(f"| {n} | {p50:.2f}× | {seq:.2f}× | {conc:.2f}× | {mem:.2f}× |")
            checks += [(f"{n}: calls/s at 32 ≥ 5× ({conc:.1f}×)", conc >= 5),
                       (f"{n}: p50 < ½ ({p50:.2f}×)", p50 < 0.5),
                       (f"{n}: memory < ⅓ ({mem:.2f}×)", mem < 1 / 3)]
        p()
        p("Gateway targets (issue 15) " + ("hold" if all(o for _, o in checks) else "do NOT hold")
          + ": " + "; ".join(("✓ " if o else "✗ ") + t for t, o in checks) + ".")


def plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, _ in PEERS if n in runs]
    panels = [
        ("one at a time: p50 latency (µs, log)", SEQ_P50, True),
        ("32 in flight: calls/s (log)", CONC_RATE, True),
        ("idle resident memory of the tree (MiB)", tree_mib, False),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 5.5))
    for ax, (title, get, log) in zip(axes, panels):
        values = [med(runs, n, get) or 0 for n in names]
        colors = ["#4c72b0" if is_warden(n) else "#999999" for n in names]
        bars = ax.barh(names, values, color=colors)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_xscale("log")
        for bar, v in zip(bars, values):
            if v:
                ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:,.0f}" if v >= 10 else f" {v:.1f}",
                        va="center", fontsize=8)
    fig.suptitle("warden (blue) and its peers (grey): echo over stdio and HTTP, medians; /bin/true for cmd-true and spawn-true",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(path, text, rounds, image):
    with open(path) as f:
        doc = f.read()
    if BEGIN not in doc or END not in doc:
        sys.exit(f"bench_report: {path} has no {BEGIN} ... {END} section to replace")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"{BEGIN}\n## Latest run ({os.cpu_count()}-core machine, {stamp}), written by scripts/bench\n\n"
               + (f"![warden and its peers]({os.path.basename(image)})\n\n" if image else "")
               + text + f"\n{END}")
    head, rest = doc.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    with open(path, "w") as f:
        f.write(head + section + tail)


def main():
    args = sys.argv[1:]
    options = {}
    while len(args) >= 2 and args[-2] in ("--write", "--plot"):
        options[args[-2]] = args[-1]
        args = args[:-2]
    results, rounds, calls, concurrency = args
    runs = load(results)
    text = report(runs, rounds, calls, concurrency)
    print(text)
    image = options.get("--plot")
    if image:
        plot(runs, image)
        print(f"bench_report: drew {image}", file=sys.stderr)
    if "--write" in options:
        write(options["--write"], text, rounds, image)
        print(f"bench_report: wrote {options['--write']}", file=sys.stderr)


if __name__ == "__main__":
    main()
