"""`vaelab export`: a run as a self-contained model folder (the library: export.py)."""

from __future__ import annotations

from .options import add_data_dir, add_device, add_overwrite, add_seed, add_split


def cmd_export(args) -> int:
    from ..errors import VaelabError
    from ..export import CARD, export_run

    if args.iw_samples < 0 or args.limit < 0:
        raise VaelabError("--iw-samples and --limit must be 0 or more")
    out = export_run(args.run_dir, args.out, which=args.which, split=args.split, iw_samples=args.iw_samples,
                     limit=args.limit, seed=args.seed, evaluate=not args.no_eval, data_dir=args.data_dir,
                     device=args.device or "cpu", overwrite=args.overwrite)
    print(f"wrote the model folder {out} (model card: {out / CARD})")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="a run as a self-contained model folder: weights, config, transform, model card",
        description="Write RUN_DIR's weights (safetensors), config, model description, data transform and a "
                    "README model card with its eval numbers into MODEL_DIR, a folder every command that takes "
                    "a run (and vaelab.load_run) accepts.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="the model folder to create")
    p.add_argument("--which", default="final", choices=("final", "best", "last"), help="which weights")
    add_split(p)
    p.add_argument("--iw-samples", type=int, default=100, metavar="K",
                   help="importance samples per image for the card's -log p(x) (default 100; 0: off)")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N images")
    p.add_argument("--no-eval", action="store_true", help="no eval numbers (the run's data are not at hand)")
    add_seed(p)
    add_device(p)
    add_data_dir(p)
    add_overwrite(p)
    p.set_defaults(func=cmd_export)
