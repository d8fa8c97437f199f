"""The run directory (contract): what a run writes, where, and the lock that guards it.

    RUN_DIR/
      config.json          the resolved config (human-readable)
      model.json           what the weights are: shapes, dataset, transform, versions
      model.safetensors    final weights (+ a fitted PCA), written when training ends
      metrics.jsonl        one JSON object per epoch
      checkpoints/         last-NNNNNN.safetensors (the newest N kept), best.safetensors
      train.log            the log, including diagnostics
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import VaelabError

CONFIG = "config.json"
MODEL_JSON = "model.json"
WEIGHTS = "model.safetensors"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LOG = "train.log"
LOCK = ".lock"


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a kill: the rest still counts
                continue
    return rows


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """The rolling checkpoints, newest first."""
    folder = Path(run_dir) / CHECKPOINTS
    return sorted(folder.glob("last-*.safetensors"), reverse=True) if folder.is_dir() else []


class RunLock:
    """An exclusive lock on a run directory, so two processes never write to one run."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.handle = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, as before
            return self
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.seek(0)
            owner = self.handle.read().strip() or "another process"
            self.handle.close()
            self.handle = None
            raise VaelabError(f"{self.path.parent} is in use by {owner}: wait for it to finish, or use another --out") from None
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
