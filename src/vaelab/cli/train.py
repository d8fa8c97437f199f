"""`vaelab train`: a preset or config file, with overrides, trained into a run directory."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import VaelabError
from .options import add_data_dir, add_device, add_quiet, add_track, config_from_args


def cmd_train(args) -> int:
    from ..training.trainer import train

    config = config_from_args(args)
    if args.resume:
        out = Path(args.resume)
        if args.out and Path(args.out) != out:
            raise VaelabError("--resume continues RUN_DIR in place: leave out --out, or give the same folder")
    elif args.out:
        out = Path(args.out)
    else:
        raise VaelabError("vaelab train needs --out RUN_DIR (where the run is written)")
    if args.nproc is not None and args.nproc != 1:
        from .. import distributed

        if distributed.launched():
            raise VaelabError("--nproc starts its own workers: leave it out under torchrun")
        if args.nproc < 1:
            raise VaelabError(f"--nproc must be at least 1, got {args.nproc}")
        return distributed.spawn(_without_nproc(args.argv), args.nproc)  # rank 0 prints the run directory
    train(config, out, resume=bool(args.resume), overwrite=args.overwrite, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from rank 0
        print(f"run directory: {out}")
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line for the workers: the same, less --nproc N."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            out.append(item)
    return out


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a VAE into a run directory")
    p.add_argument("--preset", help="a preset name (`vaelab presets`)")
    p.add_argument("--config", help="a config file (.json or .toml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--out", help="the run directory to create")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    add_device(p, training=True)
    add_data_dir(p)
    p.add_argument("--download", action="store_true", help="download the dataset if missing")
    add_quiet(p, "no progress bar or log on the terminal")
    add_track(p)
    p.add_argument("--nproc", type=int, metavar="N",
                   help="data-parallel training in N local processes (DDP; as torchrun --nproc-per-node N)")
    p.set_defaults(func=cmd_train)
