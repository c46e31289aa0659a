"""Draws the failover benchmark's chart from its JSON results.

Usage: failover_chart.py RESULTS.json OUT.png
Left: client-visible outage on owner host death (every run, median marked).
Right: time with two owners during a one-way partition of the owner.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> int:
    results_path, out_path = sys.argv[1], sys.argv[2]
    with open(results_path) as f:
        doc = json.load(f)
    results = doc["results"]
    names = [r["system"] for r in results]
    colors = ["#b0b0b0" if n.startswith("keepalived") else "#2b6cb0" for n in names]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, r in enumerate(results):
        xs = r["outages_ms"]
        ax1.scatter(xs, [i] * len(xs), color=colors[i], alpha=0.6, s=18)
        if r["median_ms"] is not None:
            ax1.plot([r["median_ms"]] * 2, [i - 0.3, i + 0.3], color="black", lw=2)
            ax1.annotate(f'{r["median_ms"]:.0f} ms', (r["median_ms"], i + 0.32), fontsize=8)
    ax1.set_yticks(range(len(names)))
    ax1.set_yticklabels(names, fontsize=8)
    ax1.set_xlabel("client-visible outage, ms (ICMP every 10 ms)")
    ax1.set_title(f'Owner host death, {doc["runs"]} runs each (bar: median)')
    ax1.grid(axis="x", alpha=0.3)

    two = [r["two_owner_ms"] or 0 for r in results]
    ax2.barh(range(len(names)), two, color=colors)
    for i, v in enumerate(two):
        ax2.annotate(f"{v:.0f} ms", (v, i), fontsize=8, va="center")
    ax2.set_yticks(range(len(names)))
    ax2.set_yticklabels(names, fontsize=8)
    ax2.set_xlabel("time with two owners, ms")
    ax2.set_title(f'One-way partition of the owner, {doc["partition_s"]} s')
    ax2.grid(axis="x", alpha=0.3)

    fig.suptitle("director vs keepalived, side by side in one VM run (cargo xtask bench failover)")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
