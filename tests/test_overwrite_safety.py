"""--overwrite loses nothing by accident: only a vaelab run directory is replaced, only once
the new run is ready to train, and a kill at any moment of the replacement leaves the old run
in place or intact beside it, where the next command puts it back. A folder left holding
only a lock (a run killed while starting) is no dead end."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import vaelab
from vaelab import rundir
from vaelab.cli import main
from vaelab.config import Config
from vaelab.errors import VaelabError
from vaelab.training.replace import restore_interrupted

from faultcount import record

TINY = ["data.name=mnist-sample", "data.limit=200", "model.hidden=16", "model.latent_dim=2",
        "train.batch_size=50", "train.device=cpu", "train.threads=1", "train.epochs=1"]
SRC = str(Path(vaelab.__file__).resolve().parents[1])

# trains TINY with --overwrite into argv[2] and SIGKILLs itself at the moment argv[1] names
KILLER = r"""
import os, signal, sys
import vaelab
from vaelab.config import Config
from vaelab.training import replace, trainer

point, out = sys.argv[1], sys.argv[2]
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
real_rename = os.rename
if point == "after-aside":  # the old run renamed aside, nothing else done
    def rename(a, b):
        real_rename(a, b)
        if ".replaced-" in str(b):
            die()
    os.rename = rename
elif point == "during-setup":  # the data loading
    trainer.prepare_data = die
elif point == "after-first-writes":  # config.json, metrics.jsonl, model.json written; not yet committed
    replace.Replacement.commit = die
elif point == "while-removing-old":  # committed: the old run renamed for removal, half removed
    replace.shutil.rmtree = die
config = Config()
config.apply_overrides(sys.argv[3:])
vaelab.train(config.validate(), out, overwrite=True, progress=False)
"""

KILL_POINTS = ["after-aside", "during-setup", "after-first-writes", "while-removing-old"]


def config(*extra: str) -> Config:
    c = Config()
    c.apply_overrides(TINY + list(extra))
    return c.validate()


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and p.name != rundir.LOCK}


def lost(before: dict, folder: Path) -> int:
    """Bytes of ``before`` that are no longer in ``folder`` as they were."""
    after = snapshot(folder) if folder.is_dir() else {}
    return sum(len(data) for name, data in before.items() if after.get(name) != data)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-epoch run, copied for each test that changes it."""
    return vaelab.train(config(), tmp_path_factory.mktemp("old") / "run", progress=False)


@pytest.fixture
def old_run(finished, tmp_path):
    return Path(shutil.copytree(finished, tmp_path / "run"))


def cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(list(argv))
    return status, err.getvalue()


def test_a_failing_overwrite_keeps_the_old_run_byte_for_byte(old_run, one_torch_thread):
    before = snapshot(old_run)
    sets = sum((["--set", s] for s in TINY), [])
    for bad in ("data.name=folder:/nope", "data.m1_run=/nope"):  # the data, then another run, fail to load
        extra = ["--set", "data.transform=m1"] if "m1_run" in bad else []
        status, err = cli("train", *sets, "--set", bad, *extra, "--out", str(old_run), "--overwrite", "--quiet")
        record("--overwrite of a run directory", lost_bytes=lost(before, old_run),
               **{"clean" if status == 2 and err.startswith("vaelab: error: ") and err.count("\n") == 1 else "traceback": 1})
        assert status == 2 and err.startswith("vaelab: error: ") and err.count("\n") == 1, err
        assert snapshot(old_run) == before and leftovers(old_run) == []


def test_only_a_vaelab_run_directory_is_overwritten(tmp_path, finished):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')")
    (project / "notes.txt").write_text("mine")
    (project / "config.json").write_text('{"data": {}, "model": {}, "train": {}}')
    before = snapshot(project)
    status, err = cli("train", "--preset", "demo", "--out", str(project), "--overwrite", "--quiet")
    record("--overwrite of a folder that is not a run", lost_bytes=lost(before, project), clean=int(status == 2))
    assert status == 2 and "does not write (notes.txt, src)" in err and snapshot(project) == before
    (project / "config.json").write_text('{"name": "my app"}')  # any config.json is not a run's
    before = snapshot(project)
    status, err = cli("train", "--preset", "demo", "--out", str(project), "--overwrite", "--quiet")
    record("--overwrite of a folder that is not a run", lost_bytes=lost(before, project), clean=int(status == 2))
    assert status == 2 and "is not a vaelab run directory" in err and snapshot(project) == before
    link = tmp_path / "link"
    link.symlink_to(finished)
    status, err = cli("train", "--preset", "demo", "--out", str(link), "--overwrite", "--quiet")
    record("--overwrite of a folder that is not a run", clean=int(status == 2))
    assert status == 2 and "symbolic link" in err


def test_a_symlinked_subfolder_is_unlinked_and_its_target_kept(old_run, tmp_path, one_torch_thread):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious.txt").write_text("keep")
    (old_run / "progress").mkdir(exist_ok=True)
    (old_run / "progress" / "linked").symlink_to(target)
    vaelab.train(config(), old_run, overwrite=True, progress=False)
    assert (target / "precious.txt").read_text() == "keep" and not (old_run / "progress" / "linked").exists()
    assert [r["epoch"] for r in rundir.read_metrics(old_run)] == [1] and leftovers(old_run) == []
    record("--overwrite of a run with a symlinked subfolder", lost_bytes=int(not (target / "precious.txt").exists()), ok=1)


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_at_every_moment_of_an_overwrite_loses_nothing_unasked(old_run, point):
    before = snapshot(old_run)
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", KILLER, point, str(old_run), *TINY, "model.latent_dim=3"],
                          env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    restore_interrupted(old_run)  # what the next `vaelab train` for this folder does first
    committed = point == "while-removing-old"  # the old run's removal had begun: asked for, not lost
    record("SIGKILL during --overwrite", lost_bytes=0 if committed else lost(before, old_run),
           **{"crash": 1} if proc.returncode != -9 else {"clean": 1})
    assert leftovers(old_run) == []
    if point == "while-removing-old":  # committed: the new run (set up, not yet trained) replaced it
        assert Config.load(old_run / "config.json").model.latent_dim == 3
        assert not (old_run / rundir.WEIGHTS).exists()
        status, err = cli("train", "--resume", str(old_run), "--quiet")  # the new run's own state
        assert status == 2 and "no usable checkpoint" in err
    else:
        assert snapshot(old_run) == before
        assert vaelab.load_run(old_run).config.model.latent_dim == 2


def test_a_run_killed_while_starting_is_no_dead_end(tmp_path, one_torch_thread):
    out = tmp_path / "fresh"
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", KILLER, "during-setup", str(out), *TINY],
                          env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9 and [p.name for p in out.iterdir()] == [rundir.LOCK]
    status, err = cli("train", "--resume", str(out), "--quiet")
    assert status == 2 and "start that run again with --out" in err
    for overwrite in ([], ["--overwrite"]):  # a plain rerun and --overwrite both go ahead
        status, err = cli("train", "--preset", "demo", *sum((["--set", s] for s in TINY), []), "--out", str(out),
                          "--quiet", *overwrite)
        assert status == 0, err
        assert [r["epoch"] for r in rundir.read_metrics(out)] == [1]
        for p in out.iterdir():  # back to the dead end: nothing but the lock
            if p.name != rundir.LOCK:
                p.unlink() if p.is_file() else shutil.rmtree(p)
    record("a run directory holding only .lock (killed while starting)", clean=1, ok=2)


def test_a_failed_first_write_leaves_no_dead_end(tmp_path, monkeypatch, one_torch_thread):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Config, "save", full)
    out = tmp_path / "run"
    with pytest.raises(VaelabError, match="disk is full"):
        vaelab.train(config(), out, progress=False)
    monkeypatch.undo()
    assert vaelab.train(config(), out, progress=False) == out  # the rerun goes ahead
    record("a run directory holding only .lock (failed first write)", clean=1, ok=1)


def test_a_replacement_in_progress_is_never_taken_over(old_run):
    aside = old_run.with_name(f".{old_run.name}.replaced-99999999")
    os.rename(old_run, aside)
    with rundir.RunLock(aside):  # another process is replacing the run
        with pytest.raises(VaelabError, match="being replaced by another vaelab process"):
            vaelab.train(config(), old_run, overwrite=True, progress=False)
        assert not old_run.exists()
    restore_interrupted(old_run)
    assert (old_run / rundir.WEIGHTS).exists() and leftovers(old_run) == []
    record("--overwrite while another process replaces the run", clean=1)
