"""`vaelab report`, `vaelab compare` and `vaelab figures`: the subcommands that show a run."""

from __future__ import annotations

from pathlib import Path

from .options import add_data_dir, add_device, add_overwrite, add_quiet, add_seed, check_output
from ..errors import VaelabError


def check_eval_args(args) -> None:
    """The checks every command with the evaluation options shares (eval, report, compare)."""
    if args.iw_samples < 0:
        raise VaelabError(f"--iw-samples must be 0 or more, got {args.iw_samples}")
    if args.limit < 0:
        raise VaelabError(f"--limit must be 0 or more, got {args.limit}")
    if args.probe_labels < 0:
        raise VaelabError(f"--probe-labels must be 0 or more, got {args.probe_labels}")


def cmd_report(args) -> int:
    from ..report import write_report
    from ..rundir.load import load_run

    check_eval_args(args)
    check_output(args.out or Path(args.run_dir) / "report.html", args.overwrite)
    run = load_run(args.run_dir, device=args.device or "cpu", data_dir=args.data_dir)
    out = write_report(run, args.out, iw_samples=args.iw_samples, limit=args.limit,
                       probe_labels=args.probe_labels, seed=args.seed, progress=not args.quiet)
    print(f"wrote {out}")
    return 0


def cmd_compare(args) -> int:
    from ..compare import compare_runs, split_run_paths

    check_eval_args(args)
    check_output(args.out, args.overwrite, folder=True)
    for skipped in split_run_paths(args.run_dirs)[1]:
        print(f"skipped {skipped}: a file, not a run directory")
    paths = compare_runs(args.run_dirs, args.out, iw_samples=args.iw_samples, limit=args.limit,
                         probe_labels=args.probe_labels, seed=args.seed, progress=not args.quiet,
                         data_dir=args.data_dir, device=args.device or "cpu")
    print(f"wrote {paths['html']}, {paths['markdown']} and {paths['csv']}")
    return 0


def cmd_figures(args) -> int:
    from ..figures import write_figures
    from ..rundir.load import load_run

    out = Path(args.out)
    check_output(out, args.overwrite, folder=True)
    run = load_run(args.run_dir, device=args.device or "cpu", data_dir=args.data_dir)
    paths = write_figures(run, out, seed=args.seed)
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def _eval_options(p) -> None:
    p.add_argument("--iw-samples", type=int, default=100, metavar="K",
                   help="importance samples per image for -log p(x) (default 100; 0: skip)")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N test images")
    p.add_argument("--probe-labels", type=int, default=0, metavar="N",
                   help="also fit latent probes on N labelled training images")
    add_seed(p)
    add_device(p)
    add_data_dir(p)
    add_overwrite(p)
    add_quiet(p)


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="one self-contained HTML report of a run")
    p.add_argument("run_dir")
    p.add_argument("--out", metavar="FILE.html", help="where to write it (default RUN_DIR/report.html)")
    _eval_options(p)
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("compare", help="compare runs: an HTML page, a Markdown table and a CSV")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for compare.html, compare.md, compare.csv")
    _eval_options(p)
    p.set_defaults(func=cmd_compare)

    p = subparsers.add_parser("figures", help="write every figure of a run as PNG files")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG files (created)")
    add_seed(p)
    add_device(p)
    add_data_dir(p)
    add_overwrite(p)
    p.set_defaults(func=cmd_figures)
