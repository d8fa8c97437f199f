"""Options that several commands share, defined once so they read and behave the same."""

from __future__ import annotations

DATA_DIR_HELP = "where datasets live (default: the run's recorded folder, else $VAELAB_DATA or the user cache)"


def add_device(parser, training: bool = False) -> None:
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: " +
                        ("cuda when present)" if training else "cpu)"))


def add_data_dir(parser) -> None:
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
