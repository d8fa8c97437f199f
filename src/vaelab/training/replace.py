"""Replacing a run directory (--overwrite) without ever losing it by accident.

Only a verified vaelab run directory is replaced, and only once the new run is ready to
train: the old run is renamed aside (``.NAME.replaced-PID``, beside it, holding its lock),
the new run sets up in NAME (data, model, first files), and only at the start of training
is the old one renamed to ``.NAME.discard-PID`` and removed. Each step is one rename, so a
kill at any moment leaves the old run in NAME, or intact beside it, where the next `vaelab
train` for NAME puts it back (restore_interrupted); a failure before training puts it back
at once. A folder holding nothing but a lock (a run killed while starting) counts as empty.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .. import rundir
from ..errors import VaelabError
from ..rundir import validate

#: what a run directory may hold: training's files, then those later commands write into it
#: (report.html, sweep-eval.json, the demo's two grids); anything else is someone's own file
RUN_ENTRIES = frozenset({
    rundir.CONFIG, rundir.MODEL_JSON, rundir.WEIGHTS, rundir.METRICS, rundir.CHECKPOINTS, rundir.LOG,
    rundir.LABELLED, rundir.LOCK, "progress", "tensorboard", "report.html", "sweep-eval.json",
    "samples.png", "reconstructions.png",
})
_TEMP = re.compile(r"\..+\.tmp-\d+")
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>replaced|discard)-(?P<pid>\d+)")


def is_dead_end(folder: Path) -> bool:
    """True for a folder that holds at most a lock, a start-up log and temporary files: what
    a run killed (or failed) before writing its config leaves. It is reused as if empty."""
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:  # set aside meanwhile (rank 0 of a DDP run replacing it)
        return True
    return all(p.name in (rundir.LOCK, rundir.LOG) or _TEMP.fullmatch(p.name) for p in entries)


def check_replaceable(out: Path) -> None:
    """Refuse, in one line, anything but a vaelab run directory."""
    if out.is_symlink():
        raise VaelabError(f"{out} is a symbolic link: give --out the folder it points to ({out.resolve()})")
    try:  # a regular file of bounded size and depth: a FIFO or deep nesting here must not hang or raise
        saved = validate.read_json(out / rundir.CONFIG)
    except VaelabError:
        saved = None
    if not (isinstance(saved, dict) and {"data", "model", "train"} <= saved.keys()):
        raise VaelabError(f"{out} is not empty and is not a vaelab run directory (no readable {rundir.CONFIG} "
                          f"written by vaelab): refusing to overwrite it; choose another --out")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_ENTRIES and not _TEMP.fullmatch(p.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise VaelabError(f"{out} holds files a vaelab run does not write ({shown}): refusing to overwrite it; "
                          f"move them out of the folder, or choose another --out")


class Replacement:
    """The old run of ``out``, set aside under its lock until commit() or put_back()."""

    def __init__(self, out: Path):
        check_replaceable(out)
        self.out = out
        self.aside = _sibling(out, "replaced")
        self.lock = rundir.RunLock(out).__enter__()  # a run in use is refused before anything moves
        try:
            os.rename(out, self.aside)  # the lock's file moves with it: the old run stays locked
        except OSError as exc:
            self.lock.__exit__()
            raise VaelabError(f"cannot move {out} aside to replace it ({exc.strerror}); nothing was changed") from None

    def commit(self) -> None:
        """The new run is ready: the old one goes (first renamed, so a kill mid-way leaves no half of it)."""
        if self.aside is None:
            return
        _discard(self.aside)
        self.aside = None
        self.lock.__exit__()

    def put_back(self) -> None:
        """The new run failed before training: the old one returns to its place."""
        if self.aside is None:
            return
        try:
            if self.out.exists():  # what the new run wrote: it never trained
                _discard(self.out)
            os.rename(self.aside, self.out)
        except OSError as exc:
            raise VaelabError(f"the previous run of {self.out} is kept in {self.aside}, but could not be moved back "
                              f"({exc.strerror}): move it back by hand") from None
        finally:
            self.lock.__exit__()
        self.aside = None

    def on_train_start(self, trainer) -> None:  # the trainer's hook: set-up has succeeded
        self.commit()


def restore_interrupted(out: Path) -> None:
    """Put back a run that a killed --overwrite of ``out`` set aside, and remove what a killed
    removal left; refuse while another process is replacing ``out``."""
    parent = out.parent if out.parent.is_dir() else None
    if parent is None:
        return
    for entry in sorted(parent.iterdir()):
        match = _LEFTOVER.fullmatch(entry.name)
        if not match or match["name"] != out.name or not entry.is_dir() or entry.is_symlink():
            continue
        if match["kind"] == "discard":
            if not _alive(int(match["pid"])):
                shutil.rmtree(entry, ignore_errors=True)
            continue
        try:
            lock = rundir.RunLock(entry).__enter__()
        except VaelabError:
            raise VaelabError(f"{out} is being replaced by another vaelab process (its old run is in {entry}); "
                              f"wait for it to start training, or choose another --out") from None
        try:
            if out.exists() and not (out.is_dir() and (is_dead_end(out) or _never_trained(out))):
                raise VaelabError(f"an interrupted --overwrite left the previous run of {out} in {entry}, and {out} "
                                  f"now holds other files: move one of them away by hand")
            if out.exists():
                _discard(out)
            os.rename(entry, out)
        finally:
            lock.__exit__()


def _never_trained(folder: Path) -> bool:
    """A run directory that set up but has no weights and no checkpoint: nothing to lose."""
    try:
        check_replaceable(folder)
    except VaelabError:
        return False
    return not (folder / rundir.WEIGHTS).exists() and not rundir.checkpoint_paths(folder)


def _sibling(out: Path, kind: str) -> Path:
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}")


def _discard(folder: Path) -> None:
    gone = _sibling(folder, "discard")
    os.rename(folder, gone)
    shutil.rmtree(gone, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
