"""`vaelab reproduce`: rerun a write-up's finding over several seeds and check it."""

from __future__ import annotations

from pathlib import Path

from .options import add_data_dir, add_quiet, add_track
from ..errors import VaelabError


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds):
        raise VaelabError(f"--seeds expects seeds like 0,1,2, got {text!r}")
    return seeds


def cmd_reproduce(args) -> int:
    from ..findings import FINDINGS, reproduce

    if args.list or not args.finding:
        for finding in FINDINGS.values():
            print(f"{finding.name:12s} {finding.minutes:4.0f} min/seed  {finding.writeup}: {finding.claim}"
                  + (f" (checked on {finding.checked_on})" if finding.checked_on else ""))
        return 0
    names = list(FINDINGS) if args.finding == "all" else [args.finding]
    if args.finding != "all" and args.finding not in FINDINGS:
        raise VaelabError(f"unknown finding {args.finding!r}; `vaelab reproduce --list` lists them")
    if args.threads < 0:
        raise VaelabError(f"--threads must be 0 or more, got {args.threads}")
    seeds = _seeds(args.seeds)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise VaelabError(f"--out {out} is a file: give a folder")
    say = (lambda *_: None) if args.quiet else print
    failed = 0
    for name in names:
        report = reproduce(name, out / name if len(names) > 1 else out, seeds, colour_data=args.colour_data,
                           grey_data=args.grey_data, data_dir=args.data_dir, threads=args.threads,
                           iw_samples=args.iw_samples, overwrite=args.overwrite, track=args.track, log=say)
        failed += report["reproduced_on"] < report["of"]
        print(f"{name}: reproduced on {report['reproduced_on']} of {report['of']} seeds "
              f"({report['minutes']} min); {out / name if len(names) > 1 else out}/results.md")
    return 1 if failed else 0


def register(subparsers) -> None:
    p = subparsers.add_parser("reproduce", help="rerun a write-up's finding over seeds and check it with numbers")
    p.add_argument("finding", nargs="?", help="a finding (`vaelab reproduce --list`), or all")
    p.add_argument("--list", action="store_true", help="list the findings with their budgets")
    p.add_argument("--out", default="runs/findings", metavar="DIR", help="where runs and results go")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--colour-data", default="svhn", metavar="NAME",
                   help="the colour dataset for the SVHN findings: svhn, or folder:PATH of 32x32 colour images")
    p.add_argument("--grey-data", default="mnist", metavar="NAME",
                   help="the grey dataset for the MNIST findings: mnist, or folder:PATH of 28x28 grey images")
    add_data_dir(p)
    p.add_argument("--threads", type=int, default=0, help="CPU threads per run (0: torch's default)")
    p.add_argument("--iw-samples", type=int, default=100, metavar="K", help="importance samples for -log p(x), where a check reads it")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    add_quiet(p, "only the verdict lines")
    add_track(p)
    p.set_defaults(func=cmd_reproduce)
