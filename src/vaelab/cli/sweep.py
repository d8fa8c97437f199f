"""`vaelab sweep`: train every combination of a grid of settings, then a table (the library: sweep.py)."""

from __future__ import annotations

from pathlib import Path

from ..errors import VaelabError
from ..sweep import RESULTS_CSV, RESULTS_MD, markdown_table, parse_grid, sweep
from .options import add_data_dir, add_device, add_quiet, add_seed, add_track, apply_run_options, load_config_source


def cmd_sweep(args) -> int:
    if not args.grid:
        raise VaelabError("vaelab sweep needs at least one --grid key=v1,v2,... (e.g. --grid model.latent_dim=2,5,20)")
    base = apply_run_options(load_config_source(args.preset), args)
    grid = parse_grid(args.grid)
    rows = sweep(base, grid, args.out, jobs=args.jobs, iw_samples=args.iw_samples, split=args.split,
                 eval_limit=args.eval_limit, seed=args.seed, progress=not args.quiet)
    print(markdown_table(rows, list(grid), {"split": args.split, "iw_samples": args.iw_samples}))
    print(f"wrote {Path(args.out) / RESULTS_CSV} and {Path(args.out) / RESULTS_MD}")
    failed = [row["run"] for row in rows if row["status"] != "ok"]
    if failed:
        raise VaelabError(f"{len(failed)} of {len(rows)} runs failed ({', '.join(failed)}); "
                          f"their errors are in {Path(args.out) / RESULTS_MD}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="train every combination of a grid of settings; a table of their eval metrics",
        description="Train PRESET once per combination of the --grid values into OUT/<key=value,...>/, "
                    "evaluate each, and write OUT/results.csv and OUT/results.md. Rerunning the same "
                    "command skips finished runs and resumes interrupted ones.")
    p.add_argument("preset", metavar="PRESET", help="a preset name (`vaelab presets`) or a config file")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2,...",
                   help="a key and its values (repeatable; every combination runs); "
                        "list values in brackets: model.hidden=[500],[500,500]")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key for every run")
    p.add_argument("--out", required=True, help="the sweep's folder")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="runs at a time, each in its own process with cores/N torch threads (default 1)")
    p.add_argument("--iw-samples", type=int, default=100, metavar="K",
                   help="importance samples per image for the IW-NLL (default 100; 0: off)")
    p.add_argument("--split", default="test",
                   help="the split to evaluate: test (default), or val (held out of train) for folders without one")
    p.add_argument("--eval-limit", type=int, default=0, metavar="N", help="evaluate only the first N images")
    add_seed(p, "the evaluation's seed")
    add_device(p, training=True)
    add_data_dir(p)
    add_quiet(p, "no per-epoch log on the terminal")
    add_track(p)
    p.set_defaults(func=cmd_sweep)
