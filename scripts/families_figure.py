"""The nats-against-minutes figure of docs/reproductions.md from benchmarks/families.py's JSON.

    python scripts/families_figure.py A.json B.json ... --out docs/images/families-time-to-quality.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--targets", default="84,82", help="horizontal lines, nats")
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for path in args.results:
        result = json.loads(Path(path).read_text())
        points = result["points"]
        label = result["preset"]
        ax.plot([p["minutes"] for p in points], [p["nll_iw"] for p in points], marker="o", label=label)
        final = result.get("final")
        if not final:  # the final estimate not (yet) made: the curve alone
            continue
        ax.scatter([points[-1]["minutes"]], [final["nll_iw"]], marker="*", s=120, zorder=3)
        ax.annotate(f"{final['nll_iw']:.2f} (K={final['iw_samples']}, {final['n_images']:,} images)",
                    (points[-1]["minutes"], final["nll_iw"]), textcoords="offset points", xytext=(-10, -16),
                    ha="right", fontsize=8)
    for target in (float(t) for t in args.targets.split(",") if t):
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.text(ax.get_xlim()[0], target, f" target {target:g}", va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("training minutes on the clock (one CPU thread, two runs sharing two cores)")
    ax.set_ylabel("test -log p(x), nats/image")
    ax.set_title("Time to quality, dynamically binarized MNIST\n(lines: K=1000 on the first 2,000 test images; "
                 "stars: the final estimate)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
