"""`vaelab data`, `presets` and `config`: what there is to train on, and with which settings."""

from __future__ import annotations

import json

from ..errors import VaelabError
from .options import add_data_dir


def cmd_data(args) -> int:
    from .. import data

    if args.action == "list":
        for name, description in data.describe_datasets():
            print(f"{name:<16} {description}")
        print(f"{'folder:PATH':<16} a folder of images (class subfolders optional)")
        print(f"data directory: {data.resolve_data_dir(args.data_dir)}")
        return 0
    if not args.name:
        raise VaelabError(f"vaelab data {args.action} needs a dataset name (`vaelab data list`)")
    if args.action == "check":
        for line in data.check_dataset(args.name, args.data_dir):
            print(line)
        return 0
    if args.action == "prepare":
        return _prepare_stores(args)
    path = data.download_dataset(args.name, args.data_dir)
    print(f"{args.name}: ready in {path}")
    return 0


def _prepare_stores(args) -> int:
    import time

    from .. import data
    from ..data.store import prepare_store

    for split in [args.split] if args.split is not None else data.splits(args.name):
        start = time.perf_counter()
        folder, written = prepare_store(args.name, split, args.data_dir, download=args.download,
                                        image_size=args.image_size, channels=args.channels, force=args.force)
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 2**20
        what = f"written in {time.perf_counter() - start:.1f} s" if written else "already prepared, checksums verified"
        print(f"{args.name} {split}: store {folder} ({size:,.0f} MiB), {what}")
    return 0


def cmd_presets(args) -> int:
    from ..presets import preset_info, preset_names

    for name in preset_names():
        info = preset_info(name)
        print(f"{name:<24} {info.get('description', '')}")
    return 0


def cmd_config(args) -> int:
    from ..config import describe_keys

    if args.preset or args.set:  # a resolved config: a preset's, or the defaults', with the overrides
        from ..config import Config
        from ..presets import load_preset

        config = load_preset(args.preset) if args.preset else Config()
        config.apply_overrides(args.set or [])
        print(json.dumps(config.validate().to_dict(), indent=2))
        return 0
    for key, type_name, default in describe_keys():
        print(f"{key:<26} {type_name:<14} {json.dumps(default)}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="list, check, download datasets, or prepare a memory-mapped store")
    p.add_argument("action", choices=("list", "check", "download", "prepare"))
    p.add_argument("name", nargs="?")
    add_data_dir(p)
    p.add_argument("--split", help="prepare: one split (default: every split)")
    p.add_argument("--image-size", type=int, help="prepare a folder: resize to this square side")
    p.add_argument("--channels", type=int, help="prepare a folder: 1 (grey) or 3 (RGB)")
    p.add_argument("--download", action="store_true", help="prepare: download the dataset if missing")
    p.add_argument("--force", action="store_true", help="prepare: write the store even if an intact one is there")
    p.set_defaults(func=cmd_data)

    p = subparsers.add_parser("presets", help="list the presets")
    p.set_defaults(func=cmd_presets)

    p = subparsers.add_parser("config", help="list the config keys, or print a preset's resolved config")
    p.add_argument("--preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_config)
