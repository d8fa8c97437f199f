"""The `vaelab` command: a thin layer that parses arguments and calls the library.

Bad input ends with one line on stderr, ``vaelab: error: ...``, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .cli_options import add_data_dir, add_device, add_overwrite, add_quiet, add_seed, add_split, check_output
from .errors import VaelabError

EXIT_BAD_INPUT = 2

#: modules that add subcommands: each has register(subparsers), whose parsers set func
COMMAND_MODULES: tuple[str, ...] = ("vaelab.report_cli", "vaelab.sweep", "vaelab.reproduce_cli")


def _config_from_args(args):
    from .config import Config
    from .presets import load_preset

    if args.preset and args.config:
        raise VaelabError("give --preset or --config, not both")
    if args.resume and (args.preset or args.config):
        raise VaelabError("--resume continues a run with its own config.json: leave out --preset/--config "
                          "(change single keys with --set)")
    if args.resume and not (Path(args.resume) / "config.json").is_file():
        raise VaelabError(f"cannot resume {args.resume}: it is not a vaelab run directory (no config.json)")
    if args.preset:
        config = load_preset(args.preset)
    elif args.config:
        config = Config.load(args.config)
    elif args.resume:
        config = Config.load(Path(args.resume) / "config.json")
    else:
        raise VaelabError("vaelab train needs --preset NAME or --config FILE (`vaelab presets` lists the presets)")
    config.apply_overrides(args.set or [])
    if getattr(args, "device", None):
        config.train.device = args.device
    if getattr(args, "data_dir", None):
        config.data.data_dir = str(args.data_dir)
    if getattr(args, "download", False):
        config.data.download = True
    return config.validate()


def cmd_train(args) -> int:
    from .train.trainer import train

    config = _config_from_args(args)
    if args.resume:
        out = Path(args.resume)
        if args.out and Path(args.out) != out:
            raise VaelabError("--resume continues RUN_DIR in place: leave out --out, or give the same folder")
    elif args.out:
        out = Path(args.out)
    else:
        raise VaelabError("vaelab train needs --out RUN_DIR (where the run is written)")
    if args.nproc is not None and args.nproc != 1:
        from . import distributed

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


def _print_eval(result: dict) -> None:
    bpd = result.get("bits_per_dim")
    nll = result.get("nll_iw")
    print(f"{result['dataset']} {result['split']}, {result['n_images']} images (nats per image, over "
          f"{result['data_space']}):")
    print(f"  ELBO           {result['elbo']:.3f}   (reconstruction {result['recon']:.3f}, KL {result['kl']:.3f})")
    if nll is not None:  # a Bernoulli on grey levels is a cross-entropy, not a normalized likelihood
        label = "cross-entropy" if "cross-entropy" in result["data_space"] else "-log p(x)"
        print(f"  {label:<14} {nll:.3f}   (importance-weighted, K={result['iw_samples']})")
    print(f"  bits/dim       {bpd:.4f}   ({result['bits_per_dim_method']})" if bpd is not None else
          "  bits/dim       n/a (no pmf over 8-bit pixels: binarized data, PCA components or a continuous Bernoulli)")
    print(f"  active units   {result['active_units']}")
    if result.get("recon_mse"):
        from .diagnostics import psnr

        print(f"  recon PSNR     {psnr(result['recon_mse']):.2f} dB   (image space; the mean image: "
              f"{psnr(result['mean_image_mse']):.2f} dB)")
    if "binarization" in result:
        print(f"  binarization   {result['binarization']}")
    if "probe_labels" in result:  # as the report says them: % test error of each classifier
        n = result["probe_labels"]
        print(f"  probes         {100 * result['probe_logreg_error']:.2f} % test error (logistic regression), "
              f"{100 * result['probe_knn_error']:.2f} % ({result['probe_knn_k']}-NN), on the posterior means of "
              f"{n} labelled training images")


def cmd_eval(args) -> int:
    from .report_cli import check_eval_args
    from .runs import load_run

    check_eval_args(args)
    run = load_run(args.run_dir, device=args.device or "cpu", which=args.which, data_dir=args.data_dir)
    result = run.evaluate(split=args.split, iw_samples=args.iw_samples, limit=args.limit,
                          seed=args.seed, progress=not args.json)
    if args.probe_labels:
        from .probes import probe_latents

        result.update(probe_latents(run, args.probe_labels, seed=args.seed, test_limit=args.limit))
    if args.json:
        print(json.dumps(result))
    else:
        _print_eval(result)
    return 0


def cmd_sample(args) -> int:
    from .imagegrid import save_grid
    from .runs import load_run

    if args.n < 1:
        raise VaelabError(f"-n must be at least 1, got {args.n}")
    check_output(args.out, args.overwrite)
    run = load_run(args.run_dir, device=args.device or "cpu")
    save_grid(run.sample(args.n, seed=args.seed), args.out)
    print(f"wrote {args.out}")
    return 0


def cmd_reconstruct(args) -> int:
    import torch

    from .imagegrid import save_grid
    from .runs import load_run

    if args.n < 1:
        raise VaelabError(f"-n must be at least 1, got {args.n}")
    check_output(args.out, args.overwrite)
    run = load_run(args.run_dir, device=args.device or "cpu", data_dir=args.data_dir)
    images, _ = run.images(args.split)
    images = images[:args.n]
    shown = run.transform.to_images(run.transform.fixed(images)).cpu()
    recon = run.reconstruct(images, seed=args.seed)
    # pairs of rows: originals above their reconstructions
    per_row = min(len(images), 10)
    rows = []
    for start in range(0, len(images), per_row):
        rows += [shown[start:start + per_row], recon[start:start + per_row]]
    save_grid(torch.cat(rows), args.out, nrow=per_row)
    print(f"wrote {args.out} (odd rows: originals as the model sees them; even rows: reconstructions)")
    return 0


def cmd_demo(args) -> int:
    from .imagegrid import save_grid
    from .presets import load_preset
    from .runs import load_run
    from .train.trainer import train

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        n = 2
        while Path(f"{out}-{n}").exists():
            n += 1
        out = Path(f"{out}-{n}")
    config = load_preset("demo")
    config.apply_overrides(args.set or [])
    if args.device:
        config.train.device = args.device
    config.validate()
    print(f"vaelab demo: training a VAE on the built-in MNIST sample into {out}")
    train(config, out, overwrite=args.overwrite, progress=not args.quiet)
    run = load_run(out)
    save_grid(run.sample(64, seed=0), out / "samples.png")
    images, _ = run.images("test")
    save_grid(__import__("torch").cat([run.transform.fixed(images[:10]), run.reconstruct(images[:10])]),
              out / "reconstructions.png", nrow=10)
    result = run.evaluate("test", iw_samples=args.iw_samples)
    _print_eval(result)
    print(f"wrote {out / 'samples.png'} and {out / 'reconstructions.png'}")
    return 0


def cmd_data(args) -> int:
    from . import data

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

    from . import data
    from .data.store import prepare_store

    for split in [args.split] if args.split else data.splits(args.name):
        start = time.perf_counter()
        folder, written = prepare_store(args.name, split, args.data_dir, download=args.download,
                                        image_size=args.image_size, channels=args.channels, force=args.force)
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 2**20
        what = f"written in {time.perf_counter() - start:.1f} s" if written else "already prepared, checksums verified"
        print(f"{args.name} {split}: store {folder} ({size:,.0f} MiB), {what}")
    return 0


def cmd_presets(args) -> int:
    from .presets import preset_info, preset_names

    for name in preset_names():
        info = preset_info(name)
        print(f"{name:<24} {info.get('description', '')}")
    return 0


def cmd_config(args) -> int:
    from .config import describe_keys

    if args.preset or args.set:  # a resolved config: a preset's, or the defaults', with the overrides
        from .config import Config
        from .presets import load_preset

        config = load_preset(args.preset) if args.preset else Config()
        config.apply_overrides(args.set or [])
        print(json.dumps(config.validate().to_dict(), indent=2))
        return 0
    for key, type_name, default in describe_keys():
        print(f"{key:<26} {type_name:<14} {json.dumps(default)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaelab", description="Train, evaluate and understand VAEs on image data.")
    parser.add_argument("--version", action="version", version=f"vaelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a VAE into a run directory")
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
    p.add_argument("--nproc", type=int, metavar="N",
                   help="data-parallel training in N local processes (DDP; as torchrun --nproc-per-node N)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run: ELBO, IW log-likelihood, bits/dim, active units")
    p.add_argument("run_dir")
    add_split(p)
    p.add_argument("--iw-samples", type=int, default=100, metavar="K", help="importance samples per image (default 100)")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N images")
    p.add_argument("--which", default="final", choices=("final", "best", "last"), help="which weights")
    p.add_argument("--probe-labels", type=int, default=0, metavar="N",
                   help="fit classifiers on the posterior means of N labelled training images")
    add_seed(p)
    add_device(p)
    add_data_dir(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="a grid of samples from the prior")
    p.add_argument("run_dir")
    p.add_argument("-n", type=int, default=64)
    p.add_argument("--out", required=True, help="PNG file to write")
    add_seed(p)
    add_device(p)
    add_overwrite(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("reconstruct", help="originals and their reconstructions")
    p.add_argument("run_dir")
    p.add_argument("-n", type=int, default=20)
    add_split(p)
    p.add_argument("--out", required=True, help="PNG file to write")
    add_seed(p)
    add_device(p)
    add_data_dir(p)
    add_overwrite(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("demo", help="train a small VAE on the built-in sample (about a minute)")
    p.add_argument("--out", default="vaelab-demo")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--iw-samples", type=int, default=100)
    add_device(p, training=True)
    add_quiet(p, "no progress bar or log on the terminal")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("data", help="list, check, download datasets, or prepare a memory-mapped store")
    p.add_argument("action", choices=("list", "check", "download", "prepare"))
    p.add_argument("name", nargs="?")
    add_data_dir(p)
    p.add_argument("--split", help="prepare: one split (default: every split)")
    p.add_argument("--image-size", type=int, help="prepare a folder: resize to this square side")
    p.add_argument("--channels", type=int, help="prepare a folder: 1 (grey) or 3 (RGB)")
    p.add_argument("--download", action="store_true", help="prepare: download the dataset if missing")
    p.add_argument("--force", action="store_true", help="prepare: write the store even if an intact one is there")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("presets", help="list the presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("config", help="list the config keys, or print a preset's resolved config")
    p.add_argument("--preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_config)

    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the subcommand's own usage, not the top level's (argparse exits with status 2)
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        (commands.get(getattr(args, "command", None)) or parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as given: --nproc re-runs it in workers
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return args.func(args)
    except VaelabError as exc:
        print(f"vaelab: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        print("vaelab: interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signum", 2)  # 130 for Ctrl-C, 143 for SIGTERM


if __name__ == "__main__":
    sys.exit(main())
