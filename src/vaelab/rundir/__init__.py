"""The run directory (contract): what a run writes, where, and the lock that guards it.

    RUN_DIR/
      config.json          the resolved config (human-readable)
      model.json           what the weights are: shapes, dataset, transform, versions, and
                           the run's id (a uuid4 written at creation; checkpoints carry it)
      model.safetensors    final weights (+ a fitted PCA), written when training ends
      metrics.jsonl        one JSON object per epoch
      checkpoints/         last-EEEEEE.safetensors after E epochs (the newest N kept),
                           last-EEEEEE-sSSSSSS.safetensors S steps into epoch E + 1 (written
                           on SIGINT / SIGTERM), best.safetensors
      train.log            the log, including diagnostics
      labelled.json        semi-supervised runs: which training images carried labels

Every file is replaced atomically (temporary file, fsync, rename), so a kill at any moment
leaves the old version or the new one, never a torn one.
Every file is read through validate.py: a run directory is input like any other.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import VaelabError

CONFIG = "config.json"
MODEL_JSON = "model.json"
WEIGHTS = "model.safetensors"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LOG = "train.log"
LABELLED = "labelled.json"  # semi-supervised runs: the training images that carried labels
LOCK = ".lock"
DAMAGED_SUFFIX = ".damaged"

_CHECKPOINT_NAME = re.compile(r"last-(\d{6,})(?:-s(\d{7,}))?\.safetensors")
_TEMP_NAME = re.compile(r"\..+\.tmp-\d+")


# atomic writes live on the ground floor (atomicio); re-exported for the run directory's users
from ..atomicio import WRITE_ERRNOS, atomic_write_bytes, write_error  # noqa: F401


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Temporary files a killed writer left behind; call only while holding the RunLock."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / CHECKPOINTS):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if _TEMP_NAME.fullmatch(path.name) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


# -- metrics -----------------------------------------------------------------------------------

def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl's rows, checked: a line torn by a kill is skipped (the rest still counts);
    a row that is not what the trainer writes (a field of another type, NaN, nesting, an epoch
    out of order or twice) makes the whole file refused with one line (a VaelabError)."""
    from . import validate

    path = Path(run_dir) / METRICS
    if not validate.regular_file(path, "metrics.jsonl (one JSON object per epoch)"):
        return []
    lines = validate.read_bytes(path, validate.METRICS_LIMIT).decode("utf-8", errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        where = f"{path} line {number}"
        try:
            row = validate.parse_json(line, where)
        except VaelabError:
            if line.startswith("{") and not line.endswith("}"):  # a line torn by a kill
                continue
            raise
        _check_metrics_row(row, where, rows[-1]["epoch"] if rows else 0)
        rows.append(row)
    return rows


#: metrics.jsonl fields that are counts, and those that are lists (per latent dimension, per layer)
_COUNT_FIELDS = ("skipped_steps", "nan_events", "active_units")
_LIST_FIELDS = ("kl_per_dim", "active_units_per_layer")


def _check_metrics_row(row, where: str, previous_epoch: int) -> None:
    """A row as the trainer writes it: epochs in order, counts, numbers or null (never NaN), lists where lists go."""
    from .validate import is_int, is_number

    fix = "metrics.jsonl was edited or damaged; restore it, or remove the line"
    if not isinstance(row, dict):
        raise VaelabError(f"{where} is not a JSON object: {fix}")
    epoch = row.get("epoch")
    if not is_int(epoch, 1):
        raise VaelabError(f"{where}: 'epoch' is {epoch!r:.40}, not a positive integer: {fix}")
    if epoch <= previous_epoch:
        raise VaelabError(f"{where}: epoch {epoch} follows epoch {previous_epoch} (each epoch has one row, in "
                          f"order): {fix}")
    for key, value in row.items():
        if key in _COUNT_FIELDS:
            ok = is_int(value, 0)
        elif key in _LIST_FIELDS:
            ok = isinstance(value, list) and all(v is None or is_number(v) for v in value)
        else:
            ok = value is None or is_number(value)
        if not ok:
            raise VaelabError(f"{where}: {key!r} is {value!r:.40}, not what the trainer writes there: {fix}")


def truncate_metrics(run_dir: Path, epoch: int) -> int:
    """Keep only whole rows of epochs 1..``epoch`` (those a checkpoint covers); returns how
    many rows were dropped. A resumed run then appends each later epoch exactly once."""
    path = Path(run_dir) / METRICS
    rows = read_metrics(run_dir)  # refuses a file that is not what the trainer wrote
    if not path.exists():
        return 0
    lines = path.read_text(errors="replace").splitlines()
    kept = [json.dumps(row) + "\n" for row in rows if row["epoch"] <= epoch]
    dropped = sum(1 for line in lines if line.strip()) - len(kept)
    if dropped:
        atomic_write_bytes(path, "".join(kept).encode())
    return dropped


# -- checkpoints -------------------------------------------------------------------------------

def checkpoint_name(epoch: int, step: int = 0) -> str:
    """``last-EEEEEE`` after ``epoch`` whole epochs, plus ``-sSSSSSSS`` when ``step`` steps of
    the next epoch are done too (a checkpoint written mid-epoch)."""
    return f"last-{epoch:06d}" + (f"-s{step:07d}" if step else "") + ".safetensors"


def checkpoint_position(path: Path) -> tuple[int, int] | None:
    """(epochs done, steps into the next epoch) from a checkpoint's name; None if not one."""
    match = _CHECKPOINT_NAME.fullmatch(Path(path).name)
    if not match:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """The rolling checkpoints, newest first (by position in training, not by file time)."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(checkpoint_position(p), p) for p in folder.glob("last-*.safetensors")]
    return [p for position, p in sorted((x for x in found if x[0] is not None), reverse=True)]


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint so it no longer counts (kept for inspection)."""
    target = Path(path).with_name(Path(path).name + DAMAGED_SUFFIX)
    os.replace(path, target)
    return target


# -- the lock ----------------------------------------------------------------------------------

class RunLock:
    """An exclusive lock on a run directory, so two processes never write to one run.

    fcntl.flock: the kernel drops the lock when its holder exits, however it exits (even
    SIGKILL), so a stale lock file never blocks a resume.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.handle = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, as before
            return self
        try:
            self.handle = open(self.path, "a+")
        except OSError as exc:
            raise write_error(self.path, exc) from None
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.seek(0)
            owner = self.handle.read().strip() or "another process"
            self.handle.close()
            self.handle = None
            raise VaelabError(f"{self.path.parent} is in use by {owner}: two runs cannot write to one "
                              f"directory; wait for it to finish, or use another --out") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"vaelab pid {os.getpid()}")
        self.handle.flush()
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        return False
