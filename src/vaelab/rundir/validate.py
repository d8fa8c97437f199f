"""Reading a run directory's files without trusting them: regular files of bounded size,
JSON of bounded depth, values of the types and structure vaelab wrote.

A run directory is input like any other: a file may be a directory, a FIFO, truncated,
edited, swapped with another run's, or re-written with a valid checksum by hand. Every
reader goes through here, and a file that is not what vaelab wrote is refused with one
line (a VaelabError) instead of a traceback, a hang or a number computed from garbage.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

from ..errors import VaelabError

MAX_DEPTH = 32  # vaelab's own JSON nests 4 deep at most
JSON_LIMIT = 16 * 2**20  # config.json, model.json, labelled.json
METRICS_LIMIT = 1 << 30  # metrics.jsonl: a row per epoch, the KL of every latent dimension in each


def regular_file(path: Path, what: str = "") -> bool:
    """True when ``path`` is a regular file (through symbolic links), False when it does not
    exist; a VaelabError when it is something else (a directory, a FIFO, a device), which
    would raise or block a reader."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise VaelabError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise VaelabError(f"{path} is {kind}, not {what or 'a file vaelab wrote'}: the run directory is damaged; "
                          f"restore it from a copy or retrain")
    return True


def read_bytes(path: Path, limit: int, what: str = "") -> bytes:
    """A regular file's bytes, refused above ``limit`` bytes."""
    path = Path(path)
    if not regular_file(path, what):
        raise VaelabError(f"{path} does not exist")
    try:
        # O_NONBLOCK: a FIFO swapped in after the check returns at once instead of waiting for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise VaelabError(f"{path} is not a regular file: the run directory is damaged")
            raw = f.read(info.st_size + 1) if info.st_size <= limit else b""
    except OSError as exc:
        raise VaelabError(f"cannot read {path}: {exc.strerror or exc}") from None
    if info.st_size > limit or len(raw) > limit:
        raise VaelabError(f"{path} is larger than {limit:,} bytes, far more than vaelab writes there: "
                          f"the run directory is damaged; restore it or retrain")
    return raw


MAX_WEIGHT = 1e30  # no trained weight or moment comes near; such a value only overflows into inf downstream


def bounded(t) -> bool:
    """A floating tensor holds only finite values of at most MAX_WEIGHT (False for NaN too)."""
    return bool((t.abs() <= MAX_WEIGHT).all())


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed here")


def parse_json(text: str | bytes, where: str, finite: bool = True):
    """Parse JSON nested at most MAX_DEPTH deep; with ``finite``, NaN and Infinity are refused."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        value = json.loads(text, parse_constant=_no_constant if finite else None)
    except RecursionError:
        raise VaelabError(f"{where} is nested too deep to be a file vaelab wrote: it is damaged") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise VaelabError(f"{where} is not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    if depth(value) > MAX_DEPTH:
        raise VaelabError(f"{where} is nested deeper than {MAX_DEPTH} levels: not a file vaelab wrote")
    return value


def read_json(path: Path, what: str = "", limit: int = JSON_LIMIT, finite: bool = True):
    return parse_json(read_bytes(path, limit, what), str(path), finite)


def depth(value) -> int:
    """How deep lists and objects nest in a parsed JSON value (iteratively: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def is_number(value, finite: bool = True) -> bool:
    """An int or float (not a bool), finite unless ``finite`` is False (NaN is never a number here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float):
        return math.isfinite(value) if finite else not math.isnan(value)
    return abs(value) < 2**63  # a bigger int is no count or size vaelab writes


def is_int(value, low: int | None = None, high: int | None = None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63
            and (low is None or value >= low) and (high is None or value <= high))


def check_like(value, template, where: str) -> None:
    """``value`` must have ``template``'s structure: the same keys of a dict, lists of the same
    length, an int where it has an int, a number where it has a float (infinities allowed,
    NaN not), a number or None where it has None, a string where it has a string."""
    stack = [(value, template, where)]
    while stack:
        v, t, at = stack.pop()
        if isinstance(t, dict):
            if not isinstance(v, dict) or set(v) != set(t):
                raise VaelabError(f"{at}: expected an object with keys {sorted(t)}, got "
                                  f"{sorted(v) if isinstance(v, dict) else type(v).__name__}")
            stack.extend((v[k], t[k], f"{at}.{k}") for k in t)
        elif isinstance(t, (list, tuple)):
            if not isinstance(v, (list, tuple)) or len(v) != len(t):
                raise VaelabError(f"{at}: expected a list of {len(t)}, got {_describe(v)}")
            stack.extend((a, b, f"{at}[{i}]") for i, (a, b) in enumerate(zip(v, t)))
        elif isinstance(t, bool):
            if not isinstance(v, bool):
                raise VaelabError(f"{at}: expected true or false, got {_describe(v)}")
        elif isinstance(t, int):
            if not is_int(v):
                raise VaelabError(f"{at}: expected an integer, got {_describe(v)}")
        elif isinstance(t, float):
            if not is_number(v, finite=False):
                raise VaelabError(f"{at}: expected a number, got {_describe(v)}")
        elif t is None:
            if v is not None and not is_number(v, finite=False):
                raise VaelabError(f"{at}: expected a number or null, got {_describe(v)}")
        elif isinstance(t, str):
            if not isinstance(v, str):
                raise VaelabError(f"{at}: expected a string, got {_describe(v)}")
        elif v != t:
            raise VaelabError(f"{at}: expected {t!r}, got {_describe(v)}")


def _describe(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
