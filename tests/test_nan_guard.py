"""The NaN guard, forced for real: no fake NaN is injected anywhere here.

Two real triggers:
- a Gaussian decoder with variance = ReLU(v) + eps and eps = 0: wherever v <= 0 the variance
  is exactly 0 and log N(x; mu, 0) is not finite (log 0 and a division by 0);
- a huge learning rate (lr = 1 with Adam) on a learned log-variance: the log-variance head
  jumps, exp() overflows or underflows, and the loss goes non-finite a few steps later.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch

import vaelab
from vaelab import rundir
from vaelab.cli import main
from vaelab.config import Config
from vaelab.rundir.checkpoint import load_tensors
from vaelab.training.nan_guard import MAX_ROLLBACKS, TrainingDiverged

STEPS = 9  # 270 training images in batches of 32
TINY = ["data.name=mnist-sample", "data.limit=300", "model.hidden=32", "model.latent_dim=4",
        "train.batch_size=32", "train.device=cpu", "train.threads=1",
        "data.transform=scale", "model.likelihood=gaussian",
        # ReLU variances start at 0 (v = 0 +- noise), as before vaelab started them at exp(logvar_init_bias)
        "model.logvar_init_bias=-30"]
RELU_NO_FLOOR = ["model.variance=relu", "model.variance_eps=0"]


def config(*extra: str) -> Config:
    c = Config()
    c.apply_overrides(TINY + list(extra))
    return c.validate()


@pytest.fixture
def one_good_epoch(tmp_path):
    """A run with one finished epoch (ReLU variance with its floor) and its checkpoint bytes."""
    out = vaelab.train(config("model.variance=relu", "model.variance_eps=1e-4", "train.epochs=1"),
                       tmp_path / "run", progress=False)
    checkpoint = out / rundir.CHECKPOINTS / "last-000001.safetensors"
    return out, checkpoint, checkpoint.read_bytes()


def test_raise_stops_with_a_diagnosis_and_keeps_the_last_good_checkpoint(one_good_epoch):
    out, checkpoint, before = one_good_epoch
    # continue the run without the variance floor: epoch 2 hits a zero variance at once
    with pytest.raises(TrainingDiverged) as info:
        vaelab.train(config("model.variance=relu", "model.variance_eps=0", "train.epochs=3"), out,
                     resume=True, progress=False)
    message = str(info.value)
    assert isinstance(info.value, vaelab.VaelabError) and "\n" not in message
    for part in ("non-finite loss in epoch 2", "non-finite term: reconstruction",
                 "smallest decoder variance 0", "lr 0.001", "last-000001.safetensors is kept",
                 "model.variance_eps > 0"):
        assert part in message, (part, message)
    # the last good checkpoint is untouched and loads; nothing of the failed epoch was kept
    assert checkpoint.read_bytes() == before
    assert [p.name for p in rundir.checkpoint_paths(out)] == ["last-000001.safetensors"]
    assert [r["epoch"] for r in rundir.read_metrics(out)] == [1]
    run = vaelab.load_run(out, which="last")
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    assert math.isfinite(run.evaluate("val", iw_samples=1)["elbo"])


def test_raise_from_the_cli_is_exit_2_with_one_line(one_good_epoch):
    out, _, _ = one_good_epoch
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(["train", "--resume", str(out), "--set", "model.variance_eps=0",
                       "--set", "train.epochs=2", "--quiet"])
    lines = err.getvalue().splitlines()
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith("vaelab: error: non-finite loss in epoch 2"), lines


def test_skip_drops_every_non_finite_batch_and_counts_it(tmp_path):
    # with no floor every batch has a zero variance somewhere: each one is dropped
    out = vaelab.train(config(*RELU_NO_FLOOR, "train.epochs=2", "train.nan_policy=skip"),
                       tmp_path / "skip", progress=False)
    rows = rundir.read_metrics(out)
    assert [r["skipped_steps"] for r in rows] == [STEPS, 2 * STEPS]
    assert [r["nan_events"] for r in rows] == [STEPS, 2 * STEPS]
    assert rows[0]["train_loss"] is None  # no batch counted: no loss, rather than a made-up 0
    assert "batch skipped (non-finite term: reconstruction" in (out / rundir.LOG).read_text()
    # dropped means dropped: not one optimizer step reached the weights
    untrained = vaelab.train(config(*RELU_NO_FLOOR, "train.epochs=0"), tmp_path / "untrained", progress=False)
    after, _ = load_tensors(out / rundir.WEIGHTS)
    before, _ = load_tensors(untrained / rundir.WEIGHTS)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_rollback_restores_the_last_good_state_lowers_the_lr_and_goes_on(tmp_path):
    out = vaelab.train(config("model.variance=learned-logvar", "train.lr=1", "train.epochs=3",
                              "train.nan_policy=rollback"), tmp_path / "rollback", progress=False)
    rows = rundir.read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # training went on to the end
    events = rows[-1]["nan_events"]
    assert events >= 1
    # each rollback halved the lr, and the lowered lr stuck
    assert rows[-1]["lr"] == pytest.approx(0.5 ** events)
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_elbo"]) for r in rows)
    weights, _ = load_tensors(out / rundir.WEIGHTS)
    assert all(torch.isfinite(v).all() for v in weights.values())
    log = (out / rundir.LOG).read_text()
    assert log.count("rolled back to the state after epoch") == events


def test_rollback_gives_up_when_lowering_the_lr_cannot_help(tmp_path):
    # a zero variance is not a step-size problem: after MAX_ROLLBACKS halvings, stop and say so
    with pytest.raises(TrainingDiverged, match=f"{MAX_ROLLBACKS} rollbacks did not help") as info:
        vaelab.train(config(*RELU_NO_FLOOR, "train.epochs=2", "train.nan_policy=rollback"),
                     tmp_path / "hopeless", progress=False)
    assert f"lr {0.001 * 0.5 ** MAX_ROLLBACKS:.3g}" in str(info.value)
    assert "no checkpoint was written yet" in str(info.value)
    lines = (tmp_path / "hopeless" / rundir.LOG).read_text().splitlines()
    assert sum("rolled back" in line for line in lines) == MAX_ROLLBACKS
    json.loads((tmp_path / "hopeless" / rundir.CONFIG).read_text())  # the run directory is intact


def test_a_diverged_run_says_why_in_its_log(tmp_path):
    with pytest.raises(TrainingDiverged):
        vaelab.train(config(*RELU_NO_FLOOR, "train.epochs=1"), tmp_path / "run", progress=False)
    log = (tmp_path / "run" / rundir.LOG).read_text()
    assert "STOPPED: non-finite loss in epoch 1" in log
