"""Inputs a hostile (or unlucky) user gives: each ends in a result or in one clear line, exit
2, within seconds and megabytes; never a traceback, a crash, a hang, or a file outside the
data folder. Every outcome is tallied for docs/faults.md (faultcount.record)."""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import os
import pickle
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import vaelab
from vaelab import atomicio
from vaelab.cli import main
from vaelab.config import Config
from vaelab.data import check_dataset, load_dataset
from vaelab.devices import resolve_device
from vaelab.errors import VaelabError

from datafiles import cifar_batch_bytes, idx_bytes, make_idx_dataset, write_image
from faultcount import SRC, record, run_cli

TINY = ["data.name=mnist-sample", "data.limit=200", "model.hidden=16", "model.latent_dim=2",
        "train.batch_size=50", "train.device=cpu", "train.threads=1", "train.epochs=1"]
MAT_FLIP_MASKS = (0x01, 0xFF, 0x80)


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


def clean(status: int, err: str) -> bool:
    return status == 2 and err.startswith("vaelab: error: ") and err.count("\n") == 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    c = Config()
    c.apply_overrides(TINY)
    return vaelab.train(c.validate(), tmp_path_factory.mktemp("tiny") / "run", progress=False)


# --- paths ------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["../../../../outside", "/tmp/abs", "train/../../x", "..", "", "a b"])
def test_split_names_cannot_leave_the_data_folder(tmp_path, split):
    images = tmp_path / "images"
    write_image(images / "train" / "a.png", np.zeros((8, 8), np.uint8))
    data = tmp_path / "data" / "deep" / "er"
    status, _, err = cli("data", "prepare", f"folder:{images}", "--split", split, "--data-dir", str(data))
    assert clean(status, err) and "plain name" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # nothing written anywhere
    with pytest.raises(VaelabError, match="plain name"):
        load_dataset(f"folder:{images}", split)
    record("path traversal in split names", clean=2)


# --- readers ----------------------------------------------------------------------------

MAT_FLIPPER = r"""
import io, os, sys, warnings
import types
import numpy as np, scipy.io
from pathlib import Path
for name in ("vaelab", "vaelab.data"):  # the reader alone, without torch: starts in a second
    package = types.ModuleType(name)
    package.__path__ = [str(Path(os.environ["PYTHONPATH"], *name.split(".")))]
    sys.modules[name] = package
from vaelab.data import svhn
from vaelab.errors import VaelabError

warnings.simplefilter("ignore")
folder, masks = Path(sys.argv[1]), [int(m) for m in sys.argv[2:]]
counts = {"ok": 0, "clean": 0, "traceback": 0, "crash": 0, "hang": 0}
x = np.random.default_rng(0).integers(0, 256, (32, 32, 3, 2), dtype=np.uint8)
for compressed in (False, True):
    for y_dtype in (np.uint8, np.float64):
        buffer = io.BytesIO()
        scipy.io.savemat(buffer, {"X": x, "y": np.array([[10], [3]], y_dtype)}, do_compression=compressed)
        base = buffer.getvalue()
        # the tags and headers (where a flipped byte misleads a reader), and the end of the file
        for i in [*range(128, 320), *range(len(base) - 48, len(base))]:
            for mask in masks:
                damaged = bytearray(base)
                damaged[i] ^= mask
                path = folder / "flipped.mat"
                path.write_bytes(bytes(damaged))
                try:  # in this one process: a crash ends it, and the test sees the signal
                    svhn.read_mat(path)
                    counts["ok"] += 1
                except VaelabError:
                    counts["clean"] += 1
                except Exception:
                    counts["traceback"] += 1
print(counts)
"""


def test_flipped_bytes_in_svhn_mat_files_never_crash_the_reader(tmp_path):
    try:
        proc = subprocess.run([sys.executable, "-c", MAT_FLIPPER, str(tmp_path), *map(str, MAT_FLIP_MASKS)],
                              capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=SRC))
    except subprocess.TimeoutExpired:
        record("SVHN .mat with one flipped byte", hang=1)
        raise
    if proc.returncode < 0:
        record("SVHN .mat with one flipped byte", crash=1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = eval(proc.stdout.strip().splitlines()[-1])
    record("SVHN .mat with one flipped byte", **counts)
    assert counts["crash"] == counts["traceback"] == counts["hang"] == 0, counts
    assert counts["clean"] > 500  # the header flips are found


def test_a_fifo_in_an_image_folder_is_skipped_not_waited_on(tmp_path):
    root = tmp_path / "images"
    for name in ("loose.png", "digits/a.png"):
        write_image(root / name, np.full((8, 8), 7, np.uint8))
    os.mkfifo(root / "digits" / "blocking.png")
    os.mkfifo(root / "fifo.jpg")
    outcome, proc = run_cli("FIFO named *.png in an image folder", ["data", "check", f"folder:{root}"], timeout=120)
    assert outcome == "ok" and "2 images" in proc.stdout, (outcome, proc and proc.stderr)


def test_nested_shared_label_lists_in_a_cifar_batch_cost_nothing(tmp_path):
    nested = [0] * 32
    for _ in range(4):  # 10 x 32**5 = 335 million ints once expanded, 31 KB as a pickle (shared references)
        nested = [nested] * 32
    raw = pickle.dumps({b"data": np.zeros((10, 3072), np.uint8), b"labels": [nested] * 10}, protocol=4)
    assert len(raw) < 40_000
    batches = tmp_path / "cifar10" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    (batches / "test_batch").write_bytes(raw)
    tracemalloc.start()
    try:
        with pytest.raises(VaelabError, match="'labels' is missing or is not 10 integers"):
            load_dataset("cifar10", "test", data_dir=tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20
    record("CIFAR batch with nested shared label lists", clean=1)


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9)


def test_gzip_idx_bombs_are_refused_before_decompressing(tmp_path):
    make_idx_dataset(tmp_path)
    folder = tmp_path / "mnist"
    n = 40_000  # 31 MB of zeros in 30 KB: a count its 30 labels do not match
    bomb = _gzip(idx_bytes(np.zeros((n, 28, 28), np.uint8)))
    (folder / "train-images-idx3-ubyte.gz").write_bytes(bomb)
    lying = _gzip(idx_bytes(np.zeros((30, 28, 28), np.uint8), dims=(30_000_000, 28, 28)))  # trailer disagrees
    cases = [(bomb, "labels file has 30 labels"), (lying, "gzip trailer")]
    for content, message in cases:
        (folder / "train-images-idx3-ubyte.gz").write_bytes(content)
        tracemalloc.start()
        try:
            with pytest.raises(VaelabError, match=message):
                load_dataset("mnist", "train", data_dir=tmp_path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 * 2**20, peak
    record("gzip IDX decompression bombs", clean=len(cases))


def test_huge_pngs_are_refused_before_decoding(tmp_path):
    from PIL import Image

    root = tmp_path / "bombs"
    root.mkdir()
    for i in range(3):  # 12000 x 12000 one-bit images: 40 KB files, 432 MB decoded as RGB each
        Image.new("1", (12_000, 12_000)).save(root / f"big-{i}.png")
    tracemalloc.start()
    try:
        with pytest.raises(VaelabError, match="12000x12000 pixels, more than"):
            check_dataset(f"folder:{root}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, peak
    record("PNG decompression bombs", clean=1)


# --- caps on what nobody means ------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["train", "--preset", "demo", "--set", "model.latent_dim=1000000000", "--out", "R"], "latent_dim must be at most"),
    (["train", "--preset", "demo", "--set", "model.hidden=[10000000]", "--out", "R"], "hidden entries must be at most"),
    (["train", "--preset", "demo", "--set", "train.threads=1000000", "--out", "R"], "threads must be at most"),
    (["train", "--preset", "demo", "--set", f"train.seed={10**26}", "--out", "R"], "seed must be at most"),
    (["train", "--preset", "demo", "--device", "mps", "--out", "R"], "train.device must be"),
    (["sample", "RUN", "-n", "1000000", "--out", "s.png"], "-n must be from 1 to 10,000"),
    (["reconstruct", "RUN", "-n", "1000000", "--out", "s.png"], "-n must be from 1 to 10,000"),
])
def test_sizes_nobody_means_are_refused_in_one_line(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    status, _, err = cli(*argv)
    assert clean(status, err) and message in err, err
    assert list(tmp_path.iterdir()) == []
    record("caps: latent size, widths, threads, seed, device, grid size", clean=1)


def test_seeds_and_devices_nobody_means(tiny_run, tmp_path):
    with pytest.raises(SystemExit) as info, contextlib.redirect_stderr(io.StringIO()) as err:
        main(["sample", str(tiny_run), "--seed", str(10**26), "--out", str(tmp_path / "s.png")])
    assert info.value.code == 2 and "from 0 to 4294967295" in err.getvalue()
    for name in ("mps", "xla", "meta"):
        with pytest.raises(VaelabError, match="is not supported|unknown device"):
            resolve_device(name)
    record("caps: latent size, widths, threads, seed, device, grid size", clean=4)


# --- outputs ------------------------------------------------------------------------------


@pytest.fixture
def full_disk(monkeypatch):
    """Every fsync fails as a full disk does (the data do not fit)."""
    def fail(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomicio.os, "fsync", fail)


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else {}


@pytest.mark.parametrize("command", ["figures", "compare", "report", "sample"])
def test_a_full_disk_leaves_no_partial_output(tiny_run, tmp_path, full_disk, command, one_torch_thread):
    out = tmp_path / "out"
    old = {"report": tmp_path / "old.html", "sample": tmp_path / "old.png"}.get(command)
    if old is not None:
        old.write_bytes(b"the previous output")
    argv = {"figures": ["figures", str(tiny_run), "--out", str(out)],
            "compare": ["compare", str(tiny_run), "--out", str(out), "--iw-samples", "2", "--quiet"],
            "report": ["report", str(tiny_run), "--out", str(old), "--iw-samples", "2", "--overwrite", "--quiet"],
            "sample": ["sample", str(tiny_run), "--out", str(old), "--overwrite"]}[command]
    status, _, err = cli(*argv)
    assert clean(status, err) and "disk is full" in err and "run the command again" in err, err
    assert all(p.stat().st_size > 0 and ".tmp-" not in p.name for p in out.rglob("*")) if out.exists() else True
    assert not any(".tmp-" in p.name for p in tmp_path.iterdir())
    partial = [p for p in tmp_path.rglob("*") if p.is_file() and (p.stat().st_size == 0 or ".tmp-" in p.name)]
    record("full disk while writing figures, compare, report, sample", clean=int(clean(status, err)),
           lost_bytes=len(b"the previous output") if old is not None and old.read_bytes() != b"the previous output" else 0)
    assert partial == []
    if old is not None:
        assert old.read_bytes() == b"the previous output"


# --- a new user's walk --------------------------------------------------------------------


def test_a_relative_data_dir_is_recorded_absolute(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    status, _, err = cli("train", "--preset", "demo", *sum((["--set", s] for s in TINY), []),
                         "--data-dir", "data", "--out", "run", "--quiet")
    assert status == 0, err
    assert Config.load(tmp_path / "run" / "config.json").data.data_dir == str(tmp_path.resolve() / "data")
    record("relative --data-dir", ok=1)


def test_a_closed_pipe_ends_quietly():
    script = textwrap.dedent("""
        import subprocess, sys
        proc = subprocess.Popen([sys.executable, "-m", "vaelab", "presets"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()  # like `| head` that has read all it wanted
        err = proc.stderr.read().decode()
        print(proc.wait(), repr(err))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=SRC))
    status, err = proc.stdout.split(" ", 1)
    assert int(status) == 141 and err.strip() == "''", proc.stdout
    record("`vaelab presets` into a closed pipe", ok=1)
