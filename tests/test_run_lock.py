"""Two processes never write to one run directory: a lock, a clear message, and no stale lock
after the holder dies (even by SIGKILL)."""

from __future__ import annotations

import contextlib
import io
import signal
import subprocess
import sys

import pytest

import vaelab
from vaelab import rundir
from vaelab.cli import main
from vaelab.config import Config
from vaelab.errors import VaelabError

TINY = ["data.name=mnist-sample", "data.limit=200", "model.hidden=16", "model.latent_dim=2",
        "train.batch_size=50", "train.device=cpu", "train.threads=1", "train.epochs=1"]

# holds the lock of the folder in argv[1] until killed; says so on stdout
HOLDER = ("import sys, time; from vaelab.rundir import RunLock; lock = RunLock(sys.argv[1]).__enter__(); "
          "print('locked', flush=True); time.sleep(120)")


def config() -> Config:
    c = Config()
    c.apply_overrides(TINY)
    return c.validate()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return vaelab.train(config(), tmp_path_factory.mktemp("lock") / "run", progress=False)


@pytest.fixture
def holder(run_dir):
    """Another process holding the run's lock."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != rundir.LOCK}


def test_a_second_writer_is_refused_and_the_run_untouched(run_dir, holder):
    before = snapshot(run_dir)
    expected = f"{run_dir} is in use by vaelab pid {holder.pid}: two runs cannot write to one directory"
    with pytest.raises(VaelabError, match="in use by") as info:
        vaelab.train(config(), run_dir, resume=True, progress=False)
    assert str(info.value).startswith(expected)
    with pytest.raises(VaelabError, match=f"in use by vaelab pid {holder.pid}"):  # --overwrite deletes nothing
        vaelab.train(config(), run_dir, overwrite=True, progress=False)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(["train", "--resume", str(run_dir), "--quiet"])
    assert status == 2 and err.getvalue() == f"vaelab: error: {expected}; wait for it to finish, or use another --out\n"
    assert snapshot(run_dir) == before


def test_the_lock_dies_with_its_holder(run_dir, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with rundir.RunLock(run_dir):  # the kernel released it: no stale lock to clean up by hand
        pass
    vaelab.train(config(), run_dir, overwrite=True, progress=False)
    assert [r["epoch"] for r in rundir.read_metrics(run_dir)] == [1]


def test_two_writers_in_one_process_are_refused_too(tmp_path):
    with rundir.RunLock(tmp_path):
        with pytest.raises(VaelabError, match="in use by vaelab pid"):
            with rundir.RunLock(tmp_path):
                pass
    with rundir.RunLock(tmp_path):  # released on exit
        pass
