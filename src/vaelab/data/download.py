"""Fetching dataset files: mirrors, md5 verification, atomic writes, safe tar extraction."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from ..errors import VaelabError

from ._text import reason

# One table of mirrors (base URLs, tried in order) per dataset. Tests monkeypatch it.
MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "kmnist": ["http://codh.rois.ac.jp/kmnist/dataset/kmnist/"],
    "svhn": ["http://ufldl.stanford.edu/housenumbers/"],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/"],
}

# md5 of each file as published (the archive, not its decompressed content).
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "kmnist": {
        "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
    },
    "svhn": {
        "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
        "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
        "extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7",
    },
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
}

TIMEOUT_S = 30.0  # per network operation (connect / each read), not per file
_CHUNK = 1 << 20
_USER_AGENT = "vaelab (python urllib)"  # some hosts refuse urllib's default agent


class _MirrorFailed(Exception):
    """One mirror could not deliver a good copy; the message is the reason."""


def fetch_file(filename: str, mirrors: list[str], md5: str, folder: Path, progress: bool = True) -> Path:
    """Download ``filename`` from the first mirror that delivers it with the right md5.

    The file is streamed to a temporary file in ``folder``, verified, fsynced and then
    atomically renamed to ``folder/filename``; a bad or partial copy never gets that name.
    """
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # removed again if nothing comes
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VaelabError(
            f"cannot create {folder} ({reason(exc)}); set --data-dir / VAELAB_DATA to a writable folder"
        ) from None
    failures = []
    for base in mirrors:
        url = base if base.endswith(filename) else base.rstrip("/") + "/" + filename
        try:
            _fetch_one(url, folder / filename, md5, progress)
            return folder / filename
        except _MirrorFailed as exc:
            failures.append(f"{url} ({exc})")
    tried = "; ".join(failures) if failures else "no mirrors configured"
    for path in created:  # innermost first: "nothing written" leaves no empty folders either
        try:
            path.rmdir()
        except OSError:  # not empty (another file arrived) or not ours to remove
            break
    raise VaelabError(
        f"could not download {filename}: {tried}; check the network connection, or download "
        f"the file yourself and put it in {folder}"
    )


def _fetch_one(url: str, dest: Path, md5: str, progress: bool) -> None:
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:  # the same for every mirror, so stop here
        raise VaelabError(
            f"cannot write in {dest.parent} ({reason(exc)}); set --data-dir / VAELAB_DATA to a writable folder"
        ) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(url, out, dest.name, progress)
            if digest != md5.lower():
                raise _MirrorFailed(f"md5 mismatch: got {digest}, expected {md5}")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except OSError as exc:  # local disk trouble (full, read-only) or a dropped connection
        raise _MirrorFailed(reason(exc)) from None
    finally:
        tmp.unlink(missing_ok=True)


def _stream(url: str, out, label: str, progress: bool) -> str:
    """Copy ``url`` into ``out``; return the md5 hex digest of what was written."""
    digest = hashlib.md5(usedforsecurity=False)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            bar = _progress_bar(label, total, progress)
            received = 0
            try:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
            if total is not None and received != total:  # read() ends quietly on a cut connection
                raise _MirrorFailed(f"connection closed after {received} of {total} bytes")
    except urllib.error.HTTPError as exc:
        raise _MirrorFailed(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _MirrorFailed(reason(exc.reason)) from None
    except (OSError, ValueError, http.client.HTTPException) as exc:  # timeouts, resets, cut-off bodies
        raise _MirrorFailed(reason(exc)) from None
    return digest.hexdigest()


def _progress_bar(label: str, total: int | None, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # progress is a nicety, never a requirement
        return None
    return tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                disable=None)  # no bar when stderr is not a terminal


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; not every platform can open a directory, so best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in chunks (hashlib.file_digest needs Python 3.11)."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- safe tar extraction ---------------------------------------------------------------


def tar_member_names(tar_path: Path) -> list[str]:
    """Names of the regular files in a tarball, after checking every member is safe."""
    with _open_tar(tar_path) as tar:
        return [m.name for m in _safe_members(tar, tar_path) if m.isfile()]


def safe_extract_tar(tar_path: Path, dest: Path) -> list[Path]:
    """Extract ``tar_path`` into ``dest`` without trusting the archive.

    Every member is checked before anything is written: only regular files and directories
    with relative paths that stay inside ``dest`` are accepted (no links, devices, ``..``).
    Files are extracted into a temporary folder in ``dest`` and their top-level entries are
    then renamed into place, so an interrupted extraction leaves nothing half-written.
    Returns the top-level paths created. An existing top-level entry is left untouched.
    """
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        with _open_tar(tar_path) as tar:
            members = _safe_members(tar, tar_path)
            try:
                for member in members:
                    if not PurePosixPath(member.name).parts:
                        continue
                    target = staging.joinpath(*PurePosixPath(member.name).parts)
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    with source, open(target, "wb") as out:
                        shutil.copyfileobj(source, out, _CHUNK)
            except (tarfile.TarError, EOFError, zlib.error) as exc:
                raise VaelabError(f"{tar_path} is damaged ({reason(exc)}); delete it and download it again") from None
        created = []
        for entry in sorted(staging.iterdir()):
            final = dest / entry.name
            if final.exists():  # keep what is there (maybe from a concurrent extraction)
                continue
            try:
                os.rename(entry, final)
            except OSError:
                if final.exists():  # another process won the race; its copy is complete
                    continue
                raise
            created.append(final)
        return created
    except OSError as exc:
        raise VaelabError(f"cannot extract {tar_path} into {dest}: {reason(exc)}; check free disk space and permissions") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _open_tar(tar_path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(tar_path, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise VaelabError(f"cannot open {tar_path} as a tar archive ({reason(exc)}); delete it and download it again") from None


def _safe_members(tar: tarfile.TarFile, tar_path: Path) -> list[tarfile.TarInfo]:
    """All members, or VaelabError naming the first one that is not a plain relative path."""
    try:
        members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise VaelabError(f"{tar_path} is damaged ({reason(exc)}); delete it and download it again") from None
    for m in members:
        name = m.name
        parts = PurePosixPath(name).parts
        bad = None
        if not (m.isfile() or m.isdir()):
            bad = "is a link or special file"
        elif m.isdir() and not parts:  # "." / "./": the extraction folder itself
            continue
        elif not parts or name.startswith(("/", "\\")) or ".." in parts or "\\" in name or ":" in name:
            bad = "has a path that escapes the extraction folder"
        if bad:
            raise VaelabError(
                f"refusing to extract {tar_path}: member {name!r} {bad}; the archive is not the "
                "official one, delete it and download it again"
            )
    return members
