"""Atomic file writes: a file is replaced whole or not at all, and a full disk or a
read-only folder becomes one clear VaelabError. The ground floor: every layer that writes a
file (config, data stores, run directories, figures, reports) takes its writes from here."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import VaelabError

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
#: the write errors that get one clear line (write_error) instead of a traceback
WRITE_ERRNOS = _DISK_FULL | _NOT_WRITABLE


#: what to do once space is freed: training resumes; any other output is simply written again
RESUME = "resume with `vaelab train --resume RUN_DIR`"
RERUN = "run the command again"


def write_error(path: Path, exc: OSError, then: str = RESUME) -> VaelabError:
    reason = exc.strerror or str(exc)
    if exc.errno in _DISK_FULL:
        fix = f"the disk is full: free some space, then {then}"
    elif exc.errno in _NOT_WRITABLE:
        fix = "the folder is not writable: choose a writable --out"
    else:
        fix = "check the output folder"
    return VaelabError(f"cannot write {path}: {reason} ({fix})")


def atomic_write_bytes(path: Path, data: bytes, then: str = RESUME) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it.

    A crash leaves either the old file or the new one, never a torn one. Disk-full and
    permission errors become a VaelabError; the old file is untouched and no temporary
    file is left behind.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:  # also KeyboardInterrupt: never leave a temp file behind
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise write_error(path, exc, then) from None
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_output(path: Path, data: bytes | str) -> Path:
    """An output of a command (a figure, a report, a table): whole or not at all, and a full
    disk is one line that says to run the command again."""
    path = Path(path)
    if not path.parent.is_dir():
        raise VaelabError(f"cannot write {path}: folder {path.parent} does not exist")
    atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data, then=RERUN)
    return path
