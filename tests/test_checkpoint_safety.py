"""Checkpoint files under damage and attack: every changed byte and every truncation is
refused by the checksum; resume falls back to the previous checkpoint; a malicious pickle in
a checkpoint's place is refused, never run; a full disk or a read-only folder gives one clear
error and leaves the previous file byte-identical, with no temporary file behind."""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

import vaelab
from vaelab import atomicio, rundir
from vaelab.cli import main
from vaelab.config import Config
from vaelab.errors import VaelabError
from vaelab.rundir import checkpoint as ckpt

SRC = Path(vaelab.__file__).parent
TINY = ["data.name=mnist-sample", "data.limit=300", "model.hidden=32", "model.latent_dim=4",
        "train.batch_size=32", "train.device=cpu", "train.threads=1"]


def config(*extra: str) -> Config:
    c = Config()
    c.apply_overrides(TINY + list(extra))
    return c.validate()


def report(**values) -> None:
    """Measured numbers for scripts/fault_table.py, when it is the one running the tests."""
    if os.environ.get("VAELAB_FAULT_REPORT"):
        with open(os.environ["VAELAB_FAULT_REPORT"], "a") as f:
            f.write(json.dumps(values) + "\n")


def small_checkpoint(path: Path) -> bytes:
    tensors = {"model.w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
               "optim.0.step": torch.tensor(3.0), "rng.data": torch.arange(4, dtype=torch.uint8)}
    ckpt.save_tensors(path, tensors, {"epoch": 2, "best_val": -1.5})
    return path.read_bytes()


# -- the checksum ------------------------------------------------------------------------------

def test_round_trip(tmp_path):
    small_checkpoint(tmp_path / "c.safetensors")
    tensors, meta = ckpt.load_tensors(tmp_path / "c.safetensors")
    assert meta == {"epoch": 2, "best_val": -1.5}
    assert torch.equal(tensors["model.w"], torch.arange(6, dtype=torch.float32).reshape(2, 3))


def test_every_single_byte_change_is_refused(tmp_path):
    """Flip each byte of the file (in the header, the metadata and the tensor data) in two
    ways; not one damaged file loads."""
    raw = small_checkpoint(tmp_path / "c.safetensors")
    header_end = 8 + int.from_bytes(raw[:8], "little")
    damaged = tmp_path / "damaged.safetensors"
    tried = 0
    for position in range(len(raw)):
        for mask in (0x01, 0xFF):
            changed = bytearray(raw)
            changed[position] ^= mask
            damaged.write_bytes(changed)
            with pytest.raises(VaelabError) as info:
                ckpt.load_tensors(damaged)
            tried += 1
            if position >= header_end:  # the tensor bytes: caught by the checksum itself
                assert "failed its checksum" in str(info.value)
    assert tried == 2 * len(raw) and len(raw) - header_end == 24 + 4 + 4
    report(byte_changes=tried, checkpoint_bytes=len(raw))


def test_every_truncation_is_refused(tmp_path):
    raw = small_checkpoint(tmp_path / "c.safetensors")
    cut = tmp_path / "cut.safetensors"
    for length in range(len(raw)):
        cut.write_bytes(raw[:length])
        with pytest.raises(VaelabError, match="not a readable vaelab checkpoint|checksum"):
            ckpt.load_tensors(cut)
    report(truncations=len(raw))


def test_a_safetensors_file_from_elsewhere_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(VaelabError, match="not a vaelab checkpoint"):
        ckpt.load_tensors(tmp_path / "other.safetensors")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 3-epoch run keeping all its checkpoints, and its final weights' bytes."""
    out = vaelab.train(config("train.epochs=3", "train.keep_checkpoints=3"),
                       tmp_path_factory.mktemp("finished") / "run", progress=False)
    return out, (out / rundir.WEIGHTS).read_bytes()


def copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    (to / rundir.LOCK).unlink(missing_ok=True)
    return to


def test_resume_falls_back_past_damaged_checkpoints(finished_run, tmp_path):
    run, final = finished_run
    out = copy_run(run, tmp_path / "run")
    folder = out / rundir.CHECKPOINTS
    newest = folder / "last-000003.safetensors"
    raw = bytearray(newest.read_bytes())
    raw[-100] ^= 0x01  # one bit in the tensor data
    newest.write_bytes(raw)
    second = folder / "last-000002.safetensors"
    second.write_bytes(second.read_bytes()[:-1000])  # truncated
    (out / rundir.WEIGHTS).unlink()
    vaelab.train(config("train.epochs=3", "train.keep_checkpoints=3"), out, resume=True, progress=False)
    log = (out / rundir.LOG).read_text()
    assert "last-000003.safetensors failed its checksum" in log
    assert "last-000002.safetensors is not a readable vaelab checkpoint" in log
    assert "resumed from last-000001.safetensors" in log
    # the damaged files are set aside, not counted as checkpoints any more
    assert (folder / "last-000003.safetensors.damaged").is_file()
    assert (folder / "last-000002.safetensors.damaged").is_file()
    # redoing epochs 2 and 3 from epoch 1 ends exactly where the first run ended
    new, _ = ckpt.load_tensors(out / rundir.WEIGHTS)
    old, _ = ckpt.load_tensors(run / rundir.WEIGHTS)
    assert all(torch.equal(new[k], old[k]) for k in old)
    assert [r["epoch"] for r in rundir.read_metrics(out)] == [1, 2, 3]


def test_resume_with_no_usable_checkpoint_is_refused(finished_run, tmp_path):
    out = copy_run(finished_run[0], tmp_path / "run")
    for path in rundir.checkpoint_paths(out):
        path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(VaelabError, match="no usable checkpoint to resume from"):
        vaelab.train(config("train.epochs=3"), out, resume=True, progress=False)


# -- malicious pickles -------------------------------------------------------------------------

class Payload:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.fixture
def payloads(tmp_path):
    """A raw pickle and a torch.save zip, both of which run code when unpickled."""
    marker = tmp_path / "PWNED"
    raw = pickle.dumps({"model.w": Payload(marker)})
    pickle.loads(raw)  # the payload is live: unpickling it does create the marker
    assert marker.exists()
    marker.unlink()
    buffer = io.BytesIO()
    torch.save({"model.w": Payload(marker)}, buffer)
    assert not marker.exists()
    return marker, {"pickle": raw, "torch.save": buffer.getvalue()}


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_never_run(finished_run, tmp_path, payloads, kind):
    marker, files = payloads
    out = copy_run(finished_run[0], tmp_path / "run")
    # in place of a checkpoint
    newest = out / rundir.CHECKPOINTS / "last-000009.safetensors"
    newest.write_bytes(files[kind])
    with pytest.raises(VaelabError, match="never loads"):
        ckpt.load_tensors(newest)
    with pytest.raises(VaelabError, match="never loads"):
        vaelab.load_run(out, which="last")
    # resume sets it aside and carries on from the real checkpoint
    vaelab.train(config("train.epochs=3"), out, resume=True, progress=False)
    assert "WARNING: skipping damaged checkpoint" in (out / rundir.LOG).read_text()
    assert (out / rundir.CHECKPOINTS / "last-000009.safetensors.damaged").exists()
    # in place of the final weights, through the CLI: exit 2, one line
    (out / rundir.WEIGHTS).write_bytes(files[kind])
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(["eval", str(out), "--iw-samples", "1", "--limit", "10"])
    assert status == 2 and len(err.getvalue().splitlines()) == 1 and "model.safetensors" in err.getvalue()
    assert not marker.exists()


def test_the_package_never_unpickles_freely():
    """No torch.load without weights_only=True, no pickle.load outside the CIFAR reader's
    restricted unpickler, no numpy allow_pickle=True, anywhere in vaelab."""
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\((?P<args>[^)]*)\)", text):
            if "weights_only=True" not in match.group("args"):
                offenders.append(f"{path.name}: {match.group(0)}")
        if "allow_pickle=True" in text:
            offenders.append(f"{path.name}: allow_pickle=True")
        if re.search(r"pickle\.(loads?|Unpickler)\b", text):
            restricted = "class _RestrictedUnpickler(pickle.Unpickler)" in text and "def find_class" in text
            if not restricted or re.search(r"pickle\.loads?\(", text):
                offenders.append(f"{path.name}: unrestricted unpickling")
    assert not offenders, offenders


# -- disk full, read-only folder ---------------------------------------------------------------

def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch, code):
    path = tmp_path / "last-000001.safetensors"
    before = small_checkpoint(path)

    def replace(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(VaelabError, match="cannot write .*last-000001.safetensors") as info:
        ckpt.save_tensors(path, {"model.w": torch.ones(3)}, {"epoch": 5})
    assert ("disk is full" if code == errno.ENOSPC else "not writable") in str(info.value)
    assert path.read_bytes() == before and no_temp_files(tmp_path)


def test_disk_full_halfway_through_the_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last-000001.safetensors"
    before = small_checkpoint(path)

    class FullDisk(io.FileIO):
        def write(self, data):
            super().write(bytes(data)[:10])  # some bytes land, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomicio, "open", lambda file, mode="r": FullDisk(file, mode.replace("b", "")),
                        raising=False)
    with pytest.raises(VaelabError, match="No space left on device .the disk is full"):
        ckpt.save_tensors(path, {"model.w": torch.ones(1000)}, {"epoch": 5})
    assert path.read_bytes() == before and no_temp_files(tmp_path)


def test_disk_full_during_training_is_one_clear_error_and_resumable(finished_run, tmp_path, monkeypatch):
    """The 2nd epoch's checkpoint cannot be written: a VaelabError (CLI: exit 2, one line),
    checkpoint 1 byte-identical, nothing half-written; freeing space and resuming finishes
    the run exactly as if nothing had happened."""
    out = tmp_path / "run"
    vaelab.train(config("train.epochs=1", "train.keep_checkpoints=3"), out, progress=False)
    first = out / rundir.CHECKPOINTS / "last-000001.safetensors"
    before = first.read_bytes()
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name.startswith("last-000002"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(["train", "--resume", str(out), "--set", "train.epochs=3", "--quiet"])
    assert status == 2 and len(err.getvalue().splitlines()) == 1
    assert "last-000002.safetensors: No space left on device (the disk is full" in err.getvalue()
    assert first.read_bytes() == before and no_temp_files(out / rundir.CHECKPOINTS)
    monkeypatch.undo()
    vaelab.train(config("train.epochs=3", "train.keep_checkpoints=3"), out, resume=True, progress=False)
    new, _ = ckpt.load_tensors(out / rundir.WEIGHTS)
    reference, _ = ckpt.load_tensors(finished_run[0] / rundir.WEIGHTS)
    assert all(torch.equal(new[k], reference[k]) for k in reference)
    assert [r["epoch"] for r in rundir.read_metrics(out)] == [1, 2, 3]


def test_unwritable_metrics_file_is_a_clear_error(tmp_path, monkeypatch):
    """Not only checkpoints: any write in the run directory failing with ENOSPC / EROFS
    (here the metrics row) ends as one VaelabError line, not a traceback."""
    real_open = builtins.open

    def opener(file, mode="r", *args, **kwargs):
        if str(file).endswith(rundir.METRICS) and "a" in mode:
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", opener)
    with pytest.raises(VaelabError, match=r"cannot write .*metrics.jsonl: Read-only file system \(the folder is not writable"):
        vaelab.train(config("train.epochs=1"), tmp_path / "run", progress=False)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes through chmod; the monkeypatched tests above stand in")
def test_read_only_checkpoint_folder_for_real(finished_run, tmp_path):
    out = copy_run(finished_run[0], tmp_path / "run")
    folder = out / rundir.CHECKPOINTS
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    folder.chmod(0o555)
    try:
        with pytest.raises(VaelabError, match="cannot write"):
            vaelab.train(config("train.epochs=4"), out, resume=True, progress=False)
    finally:
        folder.chmod(0o755)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_truncated_checkpoint_is_called_truncated_even_when_its_header_starts_like_a_pickle(tmp_path):
    raw = small_checkpoint(tmp_path / "c.safetensors")
    header = int.from_bytes(raw[:8], "little")
    # a header of 128 + 256k bytes makes the first byte 0x80, a pickle's first byte
    padded = (header + (0x80 - header % 256) % 256).to_bytes(8, "little") + raw[8:8 + header]
    padded += b" " * (int.from_bytes(padded[:8], "little") - header)
    assert padded[:1] == b"\x80"
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(padded[:len(padded) // 2])
    with pytest.raises(VaelabError, match="truncated") as info:
        ckpt.load_tensors(cut)
    assert "pickle" not in str(info.value)
