"""The `vaelab` command: a thin layer that parses arguments and calls the library.

Each command group is a module of this package with a ``register(subparsers)`` that adds
its parsers (each sets ``func``); options shared between commands are defined once in
``options``. Bad input ends with one line on stderr, ``vaelab: error: ...``, and exit
status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from ..errors import VaelabError
from ..version import __version__

EXIT_BAD_INPUT = 2

#: the command modules, in the order `vaelab --help` lists their commands
COMMAND_MODULES: tuple[str, ...] = ("train", "run", "data", "report", "sweep", "reproduce", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaelab", description="Train, evaluate and understand VAEs on image data.")
    parser.add_argument("--version", action="version", version=f"vaelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{module}").register(sub)
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
        status = args.func(args)
        sys.stdout.flush()  # here, so a closed pipe is caught below and not at exit
        return status
    except BrokenPipeError:  # `vaelab presets | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 128 + signal.SIGPIPE
    except VaelabError as exc:
        print(f"vaelab: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        print("vaelab: interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signum", 2)  # 130 for Ctrl-C, 143 for SIGTERM


if __name__ == "__main__":
    sys.exit(main())
