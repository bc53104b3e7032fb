"""Draws what scripts/scale measured (warden-scale's JSON report) as a PNG.

    scale_report.py REPORT.json OUT.png

Left: calls/s, and CPU per call by process, with one replica called
directly and with 1, 2 and 3 replicas behind haproxy (medians over the
rounds). Right: the
chaos part's answers per second, ok and not, with the restarts and the
SIGKILL marked. Needs matplotlib (scripts/scale installs it in a venv).
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(report_path, out_path):
    report = json.load(open(report_path))
    rows = report["throughput"]
    labels = ["1, direct" if not r["haproxy"] else f"{r['replicas']} via haproxy" for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(
        1, 3, figsize=(15, 4.8), gridspec_kw={"width_ratios": [1, 1, 1.7]}
    )
    x = list(range(len(rows)))
    ax1.bar(x, [r["calls_per_s"] for r in rows], color="#4c72b0", width=0.55)
    ax1.set_xticks(x, labels, fontsize=8)
    ax1.set_ylabel("stateless echo calls/s (median)")
    ax1.set_title("Throughput by replica count, 2 cores", fontsize=10)

    bottom = [0.0] * len(rows)
    for key, name, color in [
        ("warden_cpu_us_per_call", "warden replicas", "#dd8452"),
        ("haproxy_cpu_us_per_call", "haproxy", "#55a868"),
        ("client_cpu_us_per_call", "client", "#8172b3"),
    ]:
        vals = [r[key] for r in rows]
        ax2.bar(x, vals, bottom=bottom, color=color, width=0.55, label=name)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax2.set_xticks(x, labels, fontsize=8)
    ax2.set_ylabel("CPU µs per call")
    ax2.set_title("Where each call's CPU goes", fontsize=10)
    ax2.legend(loc="lower right", fontsize=8)

    tl = report["chaos"]["timeline"]
    # Half-second bins: a quarter second aliases with the 150 ms calls. The
    # last bin is cut short by the end of the load.
    group = 2
    bin_ms = tl["bin_ms"] * group

    def regroup(v):
        return [sum(v[i : i + group]) for i in range(0, len(v) - group + 1, group)]

    ok, failed = regroup(tl["ok"])[:-1], regroup(tl["failed"])[:-1]
    per_s = 1000 / bin_ms
    t = [i * bin_ms / 1000 for i in range(len(ok))]
    ax3.plot(t, [v * per_s for v in ok], color="#4c72b0", label="answered ok /s")
    ax3.plot(t, [v * per_s for v in failed], color="#c44e52", label="failed /s")
    for e in tl["events"]:
        what = e["event"]
        color = "#c44e52" if "KILL" in what or "down" in what else "#999999"
        ax3.axvline(e["ms"] / 1000, color=color, linestyle=":" if "ready" in what else "--", linewidth=1)
        ax3.annotate(what, (e["ms"] / 1000, 0), xytext=(2, 4), textcoords="offset points", rotation=90, fontsize=7, va="bottom")
    chaos = report["chaos"]
    ax3.set_title(
        f"Rolling restart and SIGKILL under load: {chaos['calls']} calls, "
        f"{chaos['lost']} lost, {chaos['kill']['failed']} failed at the kill",
        fontsize=10,
    )
    ax3.set_xlabel("seconds")
    ax3.set_ylabel("answers per second (500 ms bins)")
    ax3.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
