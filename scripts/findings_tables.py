#!/usr/bin/env python3
"""Tables and figures for docs/findings.md from the output of `vaelab reproduce all`.

    python scripts/findings_tables.py runs/findings [--figures docs/images/findings]

Prints, per finding, a Markdown table (criterion by seed) and the summary table; with
--figures, copies the seed-0 figures there, shrunk to at most 640 pixels wide.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def finding_table(report: dict) -> str:
    seeds = [s["seed"] for s in report["seeds"]]
    lines = ["| criterion | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|" + "---|" * len(seeds)]
    for i, first in enumerate(report["seeds"][0]["criteria"]):
        cells = []
        for s in report["seeds"]:
            c = s["criteria"][i]
            cells.append(f"{c['value']} ({'yes' if c['passed'] else 'no'})")
        label = first["text"] + ("" if first.get("required", True) else " *(not required)*")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--figures", type=Path)
    args = parser.parse_args()
    reports = [json.loads(p.read_text()) for p in sorted(args.root.glob("*/results.json"))]
    print("| finding | write-up | reproduced | training minutes, 3 seeds |\n|---|---|---|---|")
    for r in reports:
        print(f"| `{r['finding']}` | {r['writeup']} | {r['reproduced_on']} of {r['of']} seeds | "
              f"{r['training_minutes']} |")
    for r in reports:
        print(f"\n### {r['finding']}, data: {r.get('data') or 'mnist'}\n\n{finding_table(r)}")
    if args.figures:
        from PIL import Image

        args.figures.mkdir(parents=True, exist_ok=True)
        for r in reports:
            for png in sorted((args.root / r["finding"] / "figures").glob("*.png")):
                with Image.open(png) as image:
                    if image.width > 640:
                        image = image.resize((640, round(image.height * 640 / image.width)), Image.LANCZOS)
                    image.save(args.figures / f"{r['finding']}-{png.name}", optimize=True)


if __name__ == "__main__":
    main()
