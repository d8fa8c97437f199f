"""Options that several commands share, defined once so they read and behave the same."""

from __future__ import annotations

DATA_DIR_HELP = "where datasets live (default: the run's recorded folder, else $VAELAB_DATA or the user cache)"


def add_device(parser, training: bool = False) -> None:
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: " +
                        ("cuda when present)" if training else "cpu)"))


def add_data_dir(parser) -> None:
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)


def add_overwrite(parser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace what --out already holds")


def check_output(path, overwrite: bool, folder: bool = False) -> None:
    """Refuse to replace an existing output unless --overwrite: a file (or, for ``folder``, a
    non-empty folder) already there is one clear error, and nothing is written."""
    from pathlib import Path

    from ..errors import VaelabError

    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise VaelabError(f"--out {path} is a file: give a folder")
    taken = path.is_dir() and any(path.iterdir()) if folder else path.exists()
    if taken and not overwrite:
        raise VaelabError(f"{path} already exists: pass --overwrite to replace it, or choose another --out")


def _seed(text: str) -> int:
    import argparse

    from ..config import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {MAX_SEED}, got {text!r}")
    return value


def add_seed(parser, help: str = "seed of the Monte-Carlo draws and samples (default 0)") -> None:
    parser.add_argument("--seed", type=_seed, default=0, help=help)


def add_split(parser) -> None:
    parser.add_argument("--split", default="test", help="test (default), train, extra, or val (held out of train)")


def add_track(parser) -> None:
    parser.add_argument("--track", action="store_true",
                        help="log to MLflow ($MLFLOW_TRACKING_URI, else ./mlruns; pip install 'vaelab[mlflow]')")


def add_quiet(parser, help: str = "no progress bars") -> None:
    parser.add_argument("--quiet", action="store_true", help=help)


def load_config_source(source: str):
    """A config from a preset name or a config file (.json or .toml)."""
    from pathlib import Path

    from ..config import Config
    from ..presets import load_preset

    path = Path(source)
    return Config.load(path) if path.suffix in (".json", ".toml") and path.is_file() else load_preset(source)


def apply_run_options(config, args):
    """--set overrides, then --device, --data-dir, --download and --track where the command has them;
    validated."""
    config.apply_overrides(getattr(args, "set", None) or [])
    if getattr(args, "track", False):
        config.train.mlflow = True
    if getattr(args, "device", None):
        config.train.device = args.device
    if getattr(args, "data_dir", None):
        config.data.data_dir = str(args.data_dir)
    if getattr(args, "download", False):
        config.data.download = True
    return config.validate()


def config_from_args(args):
    """`vaelab train`'s config: --preset, --config or the run being resumed, with the options applied."""
    from pathlib import Path

    from ..config import Config
    from ..errors import VaelabError
    from ..presets import load_preset

    if args.preset and args.config:
        raise VaelabError("give --preset or --config, not both")
    if args.resume and (args.preset or args.config):
        raise VaelabError("--resume continues a run with its own config.json: leave out --preset/--config "
                          "(change single keys with --set)")
    if args.resume:  # a kill during --overwrite may have left the run beside its folder
        from ..training.replace import is_dead_end, restore_interrupted

        restore_interrupted(Path(args.resume))
    if args.resume and not (Path(args.resume) / "config.json").is_file():

        started = Path(args.resume).is_dir() and is_dead_end(Path(args.resume))
        raise VaelabError(f"cannot resume {args.resume}: it is not a vaelab run directory (no config.json)" +
                          ("; it holds only what a run killed while starting leaves: start that run again "
                           "with --out instead of --resume" if started else ""))
    if args.preset:
        config = load_preset(args.preset)
    elif args.config:
        config = Config.load(args.config)
    elif args.resume:
        config = Config.load(Path(args.resume) / "config.json")
    else:
        raise VaelabError("vaelab train needs --preset NAME or --config FILE (`vaelab presets` lists the presets)")
    return apply_run_options(config, args)
