"""Exact resume after real kills: SIGKILL in subprocesses at chosen and at random moments,
SIGINT / SIGTERM mid-epoch (a checkpoint is saved; the CLI exits 130 or 143, 128 + the signal).

Every interrupted run is resumed and must end with weights bit-identical (torch.equal on
every tensor of model.safetensors) to one uninterrupted run, and with exactly one whole
metrics.jsonl row per epoch. CPU, one thread: the arithmetic is deterministic.

The SIGKILLs come from a driver subprocess: it imports torch once, then forks one child per
kill (each child runs ``vaelab.cli.main(["train", ...])``, as ``python -m vaelab`` does), so a
dozen real kills cost one interpreter start. A chosen moment is reached by wrapping the
function that runs there (a step's binarization, the metrics write, the checkpoint file
write) to SIGKILL its own process; a random moment is a SIGKILL from the driver after a
random delay.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vaelab
from vaelab import rundir
from vaelab.config import Config
from vaelab.errors import VaelabError
from vaelab.training import trainer as trainer_module
from vaelab.rundir.checkpoint import load_tensors
from vaelab.transforms import DynamicBinarize

EPOCHS = 4
STEPS = 9  # 270 training images (300 minus 10% validation) in batches of 32
TINY = ["data.name=mnist-sample", "data.limit=300", "model.hidden=32", "model.latent_dim=4",
        "train.batch_size=32", "train.device=cpu", "train.threads=1", "train.keep_checkpoints=2",
        f"train.epochs={EPOCHS}"]
RANDOM_KILLS = 6  # SIGKILLs at random moments (quoted in docs/faults.md)


def tiny_config(*extra: str) -> Config:
    config = Config()
    config.apply_overrides(TINY + list(extra))
    return config.validate()


class _WeightsPerEpoch:
    """A callback keeping a copy of the weights at the end of every epoch."""

    def __init__(self):
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_epoch_end(self, trainer, row):
        self.weights[row["epoch"]] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> tuple[Path, dict[int, dict[str, torch.Tensor]]]:
    """One uninterrupted run of 8 epochs, and its weights after each epoch (with a constant
    lr and KL weight, the first E epochs do not depend on the total)."""
    recorder = _WeightsPerEpoch()
    out = tmp_path_factory.mktemp("reference") / "run"
    trainer_module.train(tiny_config("train.epochs=8"), out, progress=False, callbacks=[recorder])
    final, _ = load_tensors(out / rundir.WEIGHTS)
    assert_same_weights(final, recorder.weights[8])  # the final file holds the last epoch's weights
    return out, recorder.weights


@pytest.fixture(scope="module")
def reference(reference_run) -> dict[int, dict[str, torch.Tensor]]:
    return reference_run[1]


def assert_same_weights(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    state = {k[len("model."):] if k.startswith("model.") else k: v for k, v in tensors.items()
             if not k.startswith("pca.")}
    assert state.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(state[name], value), f"{name} differs from the uninterrupted run"


def assert_resumed_exactly(out: Path, reference, epochs: int = EPOCHS) -> None:
    """Resume ``out`` to the end, then: bit-identical weights, one whole row per epoch."""
    vaelab.train(tiny_config(f"train.epochs={epochs}"), out, resume=True, progress=False)
    tensors, _ = load_tensors(out / rundir.WEIGHTS)
    assert_same_weights(tensors, reference[epochs])
    lines = (out / rundir.METRICS).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, epochs + 1))
    leftovers = [p.name for p in [*out.iterdir(), *(out / rundir.CHECKPOINTS).iterdir()] if ".tmp-" in p.name]
    assert not leftovers, leftovers


def report(**values) -> None:
    """Measured numbers for scripts/fault_table.py, when it is the one running the tests."""
    if os.environ.get("VAELAB_FAULT_REPORT"):
        with open(os.environ["VAELAB_FAULT_REPORT"], "a") as f:
            f.write(json.dumps(values) + "\n")


def newest_checkpoint(out: Path) -> tuple[int, int] | None:
    paths = rundir.checkpoint_paths(out)
    return rundir.checkpoint_position(paths[0]) if paths else None


def test_the_newest_checkpoints_are_kept_in_training_order(reference_run, tmp_path):
    out, _ = reference_run
    assert [p.name for p in rundir.checkpoint_paths(out)] == ["last-000008.safetensors", "last-000007.safetensors"]
    # newest by position in training (epochs, then steps into the next), whatever the file times
    folder = tmp_path / rundir.CHECKPOINTS
    folder.mkdir()
    for name in ["last-000010.safetensors", "last-000002-s0000005.safetensors", "last-000002.safetensors",
                 "last-000009-s0000012.safetensors", "best.safetensors", "last-000011.safetensors.damaged",
                 ".last-000011.safetensors.tmp-123", "last-x.safetensors"]:
        (folder / name).write_bytes(b"")
    assert [p.name for p in rundir.checkpoint_paths(tmp_path)] == [
        "last-000010.safetensors", "last-000009-s0000012.safetensors",
        "last-000002-s0000005.safetensors", "last-000002.safetensors"]


class _StopAfter:
    """A callback asking the trainer to stop (as a signal would) after ``epoch``."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, trainer, row):
        if row["epoch"] == self.epoch:
            trainer.stop_requested = "test stop"


def test_unchanged_cosine_run_resumes_exactly(tmp_path):
    """A checkpoint's lr schedule takes its length from the config (so a longer run follows
    it); an unchanged config must still resume bit-identically."""
    cosine = ("train.lr_schedule=cosine", "train.epochs=4")
    recorder = _WeightsPerEpoch()
    trainer_module.train(tiny_config(*cosine), tmp_path / "straight", progress=False, callbacks=[recorder])
    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        trainer_module.train(tiny_config(*cosine), out, progress=False, callbacks=[_StopAfter(2)])
    vaelab.train(tiny_config(*cosine), out, resume=True, progress=False)
    tensors, _ = load_tensors(out / rundir.WEIGHTS)
    assert_same_weights(tensors, recorder.weights[4])
    straight = (tmp_path / "straight" / rundir.METRICS).read_text().splitlines()
    resumed = (out / rundir.METRICS).read_text().splitlines()
    assert [json.loads(line)["lr"] for line in resumed] == [json.loads(line)["lr"] for line in straight]


# -- SIGINT / SIGTERM in-process at exact steps -------------------------------------------

@pytest.mark.parametrize("sig,call,expected", [
    (signal.SIGTERM, 1, (0, 1)),  # during the first step of the run
    (signal.SIGINT, STEPS + 4, (1, 4)),  # mid-epoch 2: the 4th step finishes, 4 are done
    (signal.SIGTERM, 3 * STEPS, (3, 0)),  # during the last step of epoch 3: the epoch ends first
])
def test_signal_mid_epoch_saves_a_checkpoint_and_resumes_exactly(tmp_path, monkeypatch, reference, sig, call, expected):
    """The handler only sets a flag; the step under way finishes, then the position in the
    epoch (its order, the step, the partial sums, the RNG states) is saved."""
    calls = [0]
    original = DynamicBinarize.__call__

    def binarize(self, images, generator=None):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), sig)
        return original(self, images, generator)

    monkeypatch.setattr(DynamicBinarize, "__call__", binarize)
    handler = signal.getsignal(sig)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        vaelab.train(tiny_config(), out, progress=False)
    monkeypatch.undo()
    assert newest_checkpoint(out) == expected
    assert signal.getsignal(sig) is handler  # the trainer put the previous handler back
    log = (out / rundir.LOG).read_text()
    assert f"{sig.name}: stopped" in log and "checkpoint" in log
    assert_resumed_exactly(out, reference)


# -- SIGKILL at chosen moments and at random ones, from a forking driver -----------------------

DRIVER = r'''
"""Fork one child per job; each child arms its fault and runs the vaelab CLI."""
import json, os, random, signal, sys, time
import torch
import torch._dynamo  # torch's optimizers import it on first use: pay that once, before forking
import vaelab.cli
from vaelab import atomicio
from vaelab.training import trainer
from vaelab.transforms import DynamicBinarize

spec = json.loads(sys.argv[1])


def die():
    os.kill(os.getpid(), signal.SIGKILL)


class TornWrite:
    """A file whose write() stores half of the bytes, then the process is SIGKILLed."""
    def __init__(self, f):
        self.f = f
    def write(self, data):
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        die()
    def __getattr__(self, name):
        return getattr(self.f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.f.close()


def tear_writes_to(module, name_part, nth):
    """The nth open() for writing of a file whose name contains name_part gets torn."""
    seen = [0]
    def opener(file, mode="r", *args, **kwargs):
        f = open(file, mode, *args, **kwargs)
        if "r" not in mode and name_part in os.path.basename(str(file)):
            seen[0] += 1
            if seen[0] == nth:
                return TornWrite(f)
        return f
    module.open = opener


def arm(point, arg):
    if point == "step":  # inside the arg-th training step (its binarization draw)
        calls, original = [0], DynamicBinarize.__call__
        def call(self, images, generator=None):
            calls[0] += 1
            if calls[0] == arg:
                die()
            return original(self, images, generator)
        DynamicBinarize.__call__ = call
    elif point == "after-metrics-row":  # epoch arg's row is written, its checkpoint is not
        class Kill:
            def on_epoch_end(self, t, row):
                if row["epoch"] == arg:
                    die()
        trainer.CALLBACK_FACTORIES.append(lambda config: [Kill()])
    elif point == "torn-metrics-row":  # half of epoch arg's row reaches the file
        tear_writes_to(trainer, "metrics.jsonl", arg)
    elif point == "checkpoint-write":  # half of the arg-th checkpoint's temporary file is written
        tear_writes_to(atomicio, "last-", arg)  # atomic writes open their files there
    elif point == "final-weights-write":
        tear_writes_to(atomicio, "model.safetensors", arg)
    elif point == "after-checkpoint":  # checkpoint arg is renamed into place, nothing after it ran
        original = trainer.Trainer.save_checkpoint
        def save(self, *a, **k):
            path = original(self, *a, **k)
            if self.epoch == arg:
                die()
            return path
        trainer.Trainer.save_checkpoint = save


def run(job):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sys.stderr = sys.stdout = open(os.devnull, "w")
            arm(job.get("point"), job.get("arg"))
            code = vaelab.cli.main(job["argv"])
        finally:
            os._exit(code)
    start = time.perf_counter()
    if job.get("kill_after") is not None:
        time.sleep(job["kill_after"])
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return {"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "seconds": time.perf_counter() - start}


results = {}
for job in spec["chosen"]:
    results[job["name"]] = run(job)
# random moments: time one whole run (the second of two: the first child warms the caches),
# then kill runs at random times, one in each of len(spec["random"]) equal slices of that time
run(spec["timing"])
timing = run(spec["timing"])
rng = random.Random(spec["seed"])
slices = len(spec["random"])
for i, job in enumerate(spec["random"]):
    job["kill_after"] = (i + rng.random()) / slices * timing["seconds"]
    results[job["name"]] = dict(run(job), kill_after=job["kill_after"], run_seconds=timing["seconds"])
results["timing"] = timing
print(json.dumps(results))
'''

CHOSEN = [  # (name, point, arg): where the SIGKILL lands
    ("mid-epoch-2", "step", STEPS + 4),
    ("mid-epoch-1", "step", 3),  # before any checkpoint exists
    ("after-metrics-row-2", "after-metrics-row", 2),
    ("torn-metrics-row-3", "torn-metrics-row", 3),
    ("checkpoint-write-2", "checkpoint-write", 2),
    ("after-checkpoint-2", "after-checkpoint", 2),
    ("final-weights-write", "final-weights-write", 1),
]


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory):
    """Run the driver once: every chosen kill point and the random kills, each in its own
    run directory. Returns (folder, results per job name)."""
    folder = tmp_path_factory.mktemp("killed")
    config = folder / "config.json"
    tiny_config().save(config)
    argv = lambda name: ["train", "--config", str(config), "--out", str(folder / name), "--quiet"]  # noqa: E731
    spec = {
        "chosen": [{"name": n, "point": p, "arg": a, "argv": argv(n)} for n, p, a in CHOSEN],
        "timing": {"name": "timing", "argv": argv("timing") + ["--overwrite"]},
        "random": [{"name": f"random-{i}", "argv": argv(f"random-{i}")} for i in range(RANDOM_KILLS)],
        "seed": 5,
    }
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(spec)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results["timing"]["exit"] == 0
    return folder, results


@pytest.mark.parametrize("name,point,arg", CHOSEN, ids=[c[0] for c in CHOSEN])
def test_sigkill_at_chosen_moment_resumes_exactly(killed_runs, reference, name, point, arg):
    folder, results = killed_runs
    out = folder / name
    assert results[name]["signal"] == signal.SIGKILL, results[name]
    newest = newest_checkpoint(out)
    rows = rundir.read_metrics(out)
    # what the kill left behind, before the resume repairs it
    if name == "mid-epoch-1":
        assert newest is None  # nothing to resume from: refused with a clear message
        with pytest.raises(VaelabError, match="no usable checkpoint"):
            vaelab.train(tiny_config(), out, resume=True, progress=False)
        return
    if name == "mid-epoch-2":
        assert newest == (1, 0) and [r["epoch"] for r in rows] == [1]
    if name == "after-metrics-row-2":  # a row the checkpoint does not cover: it must go
        assert newest == (1, 0) and [r["epoch"] for r in rows] == [1, 2]
    if name == "torn-metrics-row-3":
        text = (out / rundir.METRICS).read_text()
        assert newest == (2, 0) and not text.endswith("\n") and [r["epoch"] for r in rows] == [1, 2]
    if name == "checkpoint-write-2":  # a half-written temporary file, never renamed into place
        temps = list((out / rundir.CHECKPOINTS).glob(".last-000002.safetensors.tmp-*"))
        assert newest == (1, 0) and len(temps) == 1 and temps[0].stat().st_size > 0
    if name == "after-checkpoint-2":
        assert newest == (2, 0) and [r["epoch"] for r in rows] == [1, 2]
    if name == "final-weights-write":
        assert newest == (EPOCHS, 0) and not (out / rundir.WEIGHTS).exists()
        assert list(out.glob(".model.safetensors.tmp-*"))
    assert_resumed_exactly(out, reference)


def test_sigkill_at_random_moments_resumes_exactly(killed_runs, reference):
    folder, results = killed_runs
    states = []
    for i in range(RANDOM_KILLS):
        name = f"random-{i}"
        out = folder / name
        if results[name]["exit"] == 0:  # the run finished before the kill: nothing to test
            states.append("finished")
            continue
        assert results[name]["signal"] == signal.SIGKILL, results[name]
        newest = newest_checkpoint(out)
        if newest is None:
            states.append("before the first checkpoint")
            with pytest.raises(VaelabError):  # no run directory or no checkpoint yet: clear refusal
                vaelab.train(tiny_config(), out, resume=True, progress=False)
            continue
        states.append(f"after checkpoint {rundir.checkpoint_name(*newest)}")
        assert_resumed_exactly(out, reference)
    report(random_kill_states=states)
    # the delays spread over the run: the kills did not all land in one place
    assert len(set(states)) >= 2, states


# -- SIGTERM to the CLI: exit 143, a checkpoint, and the lock held meanwhile -------------------

def test_sigterm_to_cli_saves_checkpoint_exits_143_and_resumes_exactly(tmp_path, reference):
    config = tmp_path / "config.json"
    tiny_config("train.epochs=100").save(config)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "vaelab", "train", "--config", str(config),
                             "--out", str(out), "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not rundir.read_metrics(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        # while it trains, a second writer is refused, naming the process that holds the run
        with pytest.raises(VaelabError, match=f"in use by vaelab pid {proc.pid}"):
            vaelab.train(tiny_config(), out, resume=True, progress=False)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr  # 128 + SIGTERM, as a shell reports it
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert "SIGTERM: stopped" in (out / rundir.LOG).read_text()
    epochs_done, step = newest_checkpoint(out)
    assert epochs_done >= 1
    target = epochs_done + 2
    if target > max(reference):
        pytest.skip(f"the signal landed late (epoch {epochs_done}); the reference stops at {max(reference)}")
    assert_resumed_exactly(out, reference, epochs=target)
