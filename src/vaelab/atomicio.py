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


def write_error(path: Path, exc: OSError) -> VaelabError:
    reason = exc.strerror or str(exc)
    if exc.errno in _DISK_FULL:
        fix = "the disk is full: free some space, then resume with `vaelab train --resume RUN_DIR`"
    elif exc.errno in _NOT_WRITABLE:
        fix = "the folder is not writable: choose a writable --out"
    else:
        fix = "check the output folder"
    return VaelabError(f"cannot write {path}: {reason} ({fix})")


def atomic_write_bytes(path: Path, data: bytes) -> None:
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
            raise write_error(path, exc) from None
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
