"""The against-minutes figures of docs/reproductions.md from benchmarks/families.py's (or
benchmarks/colour.py's) JSON: test nats (families), held-out bits/dim (colour) or test
classification error (M2, M1+M2) against training minutes.

    python scripts/families_figure.py A.json B.json ... --out docs/images/families-time-to-quality.png
    python scripts/families_figure.py m1m2.json --metric class_error --targets 3.33 --out docs/images/m1m2-error.png
    python scripts/families_figure.py colour.json --metric bits_per_dim --out docs/images/colour-time-to-quality.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# what each metric is called on the axis and in the title; error is plotted in %
METRICS = {
    "nll_iw": ("test -log p(x), nats/image", "Time to quality, dynamically binarized MNIST\n"
               "(lines: K=1000 on the first 2,000 test images; stars: the final estimate)", 1.0),
    "bits_per_dim": ("held-out bits/dim (-log2 P of the 8-bit pixels)", "Time to quality, 32x32 colour "
                     "(CIFAR-10 training JPEGs, held-out part)\n(lines: the points' K and images; stars: the final "
                     "estimate)", 1.0),
    "class_error": ("test classification error, %", "Few labels: test error against training minutes\n"
                    "(each point: all evaluated test images)", 100.0),
}


def _label(result: dict, metric: str, final: dict) -> str:
    if metric in ("nll_iw", "bits_per_dim"):
        return f"{final[metric]:.2f} (K={final['iw_samples']}, {final['n_images']:,} images)"
    return f"{100 * final['class_error']:.2f} % ({final['n_images']:,} images)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--metric", choices=sorted(METRICS), default="nll_iw")
    parser.add_argument("--targets", default=None, help="horizontal lines (default: 84,82 nats; none for error)")
    parser.add_argument("--labels", default=None, help="legend labels separated by | (default: the presets)")
    args = parser.parse_args()
    ylabel, title, scale = METRICS[args.metric]
    targets = args.targets if args.targets is not None else {"nll_iw": "84,82", "bits_per_dim": "4.5"}.get(args.metric, "")
    labels = args.labels.split("|") if args.labels else []
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for i, path in enumerate(args.results):
        result = json.loads(Path(path).read_text())
        points = [p for p in result["points"] if p.get(args.metric) is not None]
        label = labels[i] if i < len(labels) else result["preset"]
        ax.plot([p["minutes"] for p in points], [scale * p[args.metric] for p in points], marker="o", label=label)
        final = result.get("final")
        if not final or final.get(args.metric) is None:  # the final estimate not (yet) made: the curve alone
            continue
        y = scale * final[args.metric]
        ax.scatter([points[-1]["minutes"]], [y], marker="*", s=120, zorder=3)
        ax.annotate(_label(result, args.metric, final), (points[-1]["minutes"], y), textcoords="offset points",
                    xytext=(-10, -16), ha="right", fontsize=8)
    for target in (float(t) for t in targets.split(",") if t):
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.text(ax.get_xlim()[0], target, f" target {target:g}", va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("training minutes on the clock (one CPU thread on a shared 2-core machine)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
