"""Run directories as hostile input: the fuzzer (scripts/fuzz_rundir.py) at a small count, and
each minimal reproduction found by hand, as a regression test. Every reader of a run
directory must end in a result or one `vaelab: error:` line (exit 2): never a traceback, a
crash, a hang, or a number computed from a file that is not the run's own."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab import rundir
from vaelab.cli import main
from vaelab.errors import VaelabError
from vaelab.rundir import checkpoint as ckpt
from vaelab.rundir.load import load_run

from faultcount import record, run_cli

REPO = Path(__file__).resolve().parents[1]
FUZZ_COUNT = 300  # inputs in the suite's run; scripts/fuzz_rundir.py --count N runs more by hand


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("fuzz_rundir", REPO / "scripts" / "fuzz_rundir.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzz_rundir = _fuzz_module()


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> Path:
    return fuzz_rundir.base_runs(tmp_path_factory.mktemp("bases"))


@pytest.fixture
def run(bases, tmp_path) -> Path:
    """A copy of a tiny finished run (2 epochs, checkpoints with optimizer state)."""
    return Path(shutil.copytree(bases / "a", tmp_path / "run", symlinks=True))


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


def refused(*argv: str, says: str = "") -> str:
    """`vaelab ARGV` in-process must end in one `vaelab: error:` line, exit 2."""
    status, _, err = cli(*argv)
    assert status == 2 and err.startswith("vaelab: error: ") and err.count("\n") == 1, (status, err)
    assert says in err, err
    return err


def resign(path: Path, change) -> None:
    """Re-write a checkpoint with a valid checksum after ``change(tensors, meta)``, as a tool
    that knows the format (or another vaelab) would."""
    tensors, meta = fuzz_rundir._raw_checkpoint(path)
    change(tensors, meta)
    ckpt.save_tensors(path, tensors, meta)


NEWEST = "checkpoints/last-000002.safetensors"


# -- the fuzzer --------------------------------------------------------------------------------


def test_fuzzed_run_directories_end_in_a_result_or_one_line(bases, tmp_path):
    result = fuzz_rundir.fuzz(FUZZ_COUNT, workers=1, seed=0, cache=bases.parent)
    tally = result["tally"]
    counts = {"ok": tally["fine"], "clean": tally["clean"], "traceback": tally["traceback"] + tally["silent"],
              "crash": tally["crash"], "hang": tally["hang"]}
    record("mutated run directories (fuzz, seed 0)", **counts)
    assert not result["defects"], result["defects"][:5]
    assert sum(tally[o] for o in fuzz_rundir.OUTCOMES) == FUZZ_COUNT - tally["skipped"]
    assert tally["fine"] > 0 and tally["clean"] > 0  # the mutations reach both ends


# -- the minimal reproductions -----------------------------------------------------------------


@pytest.mark.parametrize("moment", [torch.zeros(3), torch.zeros(0, 16)], ids=["shape-3", "zero-length"])
def test_optimizer_state_of_another_shape_is_refused_not_a_segfault(run, moment):
    """The fused Adam kernel read out of bounds and the process died with SIGSEGV."""
    resign(run / NEWEST, lambda t, m: t.__setitem__("optim.3.exp_avg", moment))
    outcome, proc = run_cli("resumed checkpoint with optimizer state of another shape",
                            ["train", "--resume", str(run), "--quiet", "--set", "train.epochs=3"])
    assert outcome == "clean", (proc.returncode, proc.stderr[-800:])
    assert "optim.3.exp_avg" in proc.stderr


@pytest.mark.parametrize("name", ["model.json", "metrics.jsonl", "train.log"])
@pytest.mark.parametrize("kind", ["directory", "symlink", "fifo"])
def test_a_file_replaced_by_a_directory_a_link_to_one_or_a_fifo(run, name, kind):
    path = run / name
    path.unlink()
    if kind == "directory":
        path.mkdir()
    elif kind == "symlink":
        path.symlink_to(run / rundir.CHECKPOINTS)
    else:
        os.mkfifo(path)
    what = "a directory" if kind != "fifo" else "a FIFO"
    if name == "model.json":
        refused("eval", str(run), "--limit", "4", "--iw-samples", "2", "--quiet", says=what)
    if name == "metrics.jsonl":
        with pytest.raises(VaelabError, match=what):
            rundir.read_metrics(run)
    refused("train", "--resume", str(run), "--quiet", "--set", "train.epochs=3", says=what)


def test_deeply_nested_json(run):
    (run / "model.json").write_text("[" * 100000 + "]" * 100000)
    refused("eval", str(run), "--limit", "4", "--quiet", says="nested")
    (run / "metrics.jsonl").write_text('{"epoch": 1, "x": ' + "[" * 100000 + "]" * 100000 + "}\n")
    with pytest.raises(VaelabError, match="nested"):
        rundir.read_metrics(run)


@pytest.mark.parametrize("field,value", [("train_loss", "1.5"), ("nan_events", [1]), ("val_elbo", {"a": 1}),
                                         ("skipped_steps", 1.5), ("epoch", "2"), ("images_per_s", True)])
def test_metrics_fields_of_another_type(run, field, value):
    """report's training summary and the diagnostics' instability episodes raised TypeError."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows[-1][field] = value
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(VaelabError, match=field):
        rundir.read_metrics(run)


@pytest.mark.parametrize("missing", ["optim.0.exp_avg", "optim.2.exp_avg_sq", "optim.1.step"])
def test_a_checkpoint_lacking_optimizer_state(run, missing):
    resign(run / NEWEST, lambda t, m: t.pop(missing))
    refused("train", "--resume", str(run), "--quiet", "--set", "train.epochs=3", says="lacks")


def test_a_pca_lacking_its_mean(bases, tmp_path):
    run = Path(shutil.copytree(bases / "pca", tmp_path / "pca"))
    resign(run / rundir.WEIGHTS, lambda t, m: t.pop("pca.mean"))
    refused("eval", str(run), "--limit", "4", "--quiet", says="pca.mean")
    refused("train", "--resume", str(run), "--quiet", "--set", "train.epochs=3", says="pca.mean")


def test_a_huge_seed_in_config_json(run):
    config = json.loads((run / "config.json").read_text())
    config["train"]["seed"] = 10**30
    (run / "config.json").write_text(json.dumps(config))
    refused("eval", str(run), "--limit", "4", "--quiet", says="train.seed")
    refused("train", "--resume", str(run), "--quiet", "--set", "train.epochs=3", says="train.seed")


def test_free_bits_past_float32_in_config_json(run):
    """Found by the long fuzz run: resume raised RuntimeError (overflow) at the first step."""
    config = json.loads((run / "config.json").read_text())
    config["train"]["free_bits"] = 1e308
    (run / "config.json").write_text(json.dumps(config))
    refused("train", "--resume", str(run), "--quiet", "--set", "train.epochs=3", says="train.free_bits")


@pytest.mark.parametrize("change", [
    lambda g: g.__setitem__("params", [[0], [1]]),
    lambda g: g.__setitem__("betas", {"a": 1}),
    lambda g: g.__setitem__("lr", "fast"),
    lambda g: g.__setitem__("lr", -1.0),
    lambda g: g.__setitem__("extra", 1),
    lambda g: g.pop("weight_decay"),
    lambda g: g.__setitem__("weight_decay", 1e308),
], ids=["params-lists", "betas-dict", "lr-text", "lr-negative", "unknown-key", "no-weight-decay", "huge-decay"])
def test_odd_optimizer_metadata(run, change):
    """load_state raised TypeError: unhashable type 'list'."""
    resign(run / NEWEST, lambda t, m: change(m["optimizer"]["param_groups"][0]))
    refused("train", "--resume", str(run), "--quiet", "--set", "train.epochs=3", says="optimizer")


def test_optimizer_flags_are_the_trainers_own(run):
    """`differentiable: true` in a checkpoint made the fused Adam raise inside torch."""
    resign(run / NEWEST, lambda t, m: m["optimizer"]["param_groups"][0].update(differentiable=True, fused=False))
    status, _, err = cli("train", "--resume", str(run), "--quiet", "--set", "train.epochs=3")
    assert status == 0, err


@pytest.mark.parametrize("step", [torch.zeros(0), torch.tensor([1.0, 2.0]), torch.tensor(0.0),
                                  torch.tensor(math.nan), torch.tensor(5, dtype=torch.int64)],
                         ids=["zero-elements", "two", "zero", "nan", "int64"])
def test_a_step_count_that_is_not_one_positive_number(run, step):
    """A zero-element step: 'a Tensor with 0 elements cannot be converted to Scalar'."""
    resign(run / NEWEST, lambda t, m: t.__setitem__("optim.0.step", step))
    refused("train", "--resume", str(run), "--quiet", "--set", "train.epochs=3", says="step count")


# -- silent wrong results, now refused ---------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -1e31])
@pytest.mark.parametrize("file", [rundir.WEIGHTS, NEWEST])
def test_weights_holding_nan_or_huge_values(run, value, file):
    def poison(t, m):
        t["model.decoder.head.weight"] = t["model.decoder.head.weight"].clone()
        t["model.decoder.head.weight"][0, 0] = value

    resign(run / file, poison)
    which = "final" if file == rundir.WEIGHTS else "last"
    refused("eval", str(run), "--which", which, "--limit", "4", "--quiet", says="NaN/inf")
    if file == rundir.WEIGHTS:  # sample reads the final weights
        refused("sample", str(run), "-n", "4", "--out", str(run / "s.png"), says="NaN/inf")
    if file == NEWEST:
        refused("train", "--resume", str(run), "--quiet", "--set", "train.epochs=3", says="NaN/inf")


@pytest.mark.parametrize("value", [math.nan, 1e31])
def test_mid_epoch_sums_that_no_epoch_adds_up_to(bases, tmp_path, value):
    """Found by the fuzzer: partial sums of 1e31 were resumed from, giving that epoch's loss."""
    run = Path(shutil.copytree(bases / "mid", tmp_path / "mid"))
    newest = rundir.checkpoint_paths(run)[0]
    assert rundir.checkpoint_position(newest)[1] == fuzz_rundir.MID_STOP

    def poison(t, m):
        t["epoch.sums"] = t["epoch.sums"].clone()
        t["epoch.sums"][0] = value

    resign(newest, poison)
    refused("train", "--resume", str(run), "--quiet", "--set", "train.epochs=3", says="epoch sums")


def test_another_runs_checkpoint_of_the_same_architecture(bases, run):
    """It was accepted, and the resumed run silently went on from the other run's state."""
    shutil.copyfile(bases / "b" / NEWEST, run / NEWEST)
    err = refused("train", "--resume", str(run), "--quiet", "--set", "train.epochs=3", says="belongs to run")
    assert "another run" in err
    shutil.copyfile(bases / "b" / rundir.WEIGHTS, run / rundir.WEIGHTS)
    refused("eval", str(run), "--limit", "4", "--quiet", says="belongs to run")


def test_a_float16_tensor_in_a_float32_checkpoint(run):
    resign(run / rundir.WEIGHTS, lambda t, m: t.__setitem__("model.decoder.head.bias",
                                                               t["model.decoder.head.bias"].half()))
    refused("eval", str(run), "--limit", "4", "--quiet", says="float16")


def test_duplicated_metrics_lines(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], lines[0], *lines[1:]]) + "\n")
    with pytest.raises(VaelabError, match="epoch 1 follows epoch 1"):
        rundir.read_metrics(run)
    refused("train", "--resume", str(run), "--quiet", "--set", "train.epochs=3", says="epoch 1 follows")


def test_a_non_finite_elbo_is_refused_not_printed(run, monkeypatch):
    from vaelab.rundir import load

    real = load.evaluate_model
    monkeypatch.setattr(load, "evaluate_model", lambda *a, **k: dict(real(*a, **k), elbo=-math.inf))
    with pytest.raises(VaelabError, match="elbo .* is not finite"):
        load_run(run).evaluate(images=torch.zeros(4, 1, 28, 28, dtype=torch.uint8), iw_samples=2)


def test_a_torn_last_metrics_line_is_still_skipped(run):
    """A kill mid-write leaves a torn last line: the rows before it still count."""
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"train_loss": 5')
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2]


def test_runs_from_before_run_ids_still_load_and_resume(run):
    description = json.loads((run / "model.json").read_text())
    del description["run_id"]
    (run / "model.json").write_text(json.dumps(description))
    for path in [run / rundir.WEIGHTS, *sorted((run / "checkpoints").glob("*.safetensors"))]:
        resign(path, lambda t, m: m.pop("run_id"))
    assert math.isfinite(load_run(run).evaluate(images=torch.zeros(4, 1, 28, 28, dtype=torch.uint8),
                                                iw_samples=2)["elbo"])
    status, _, err = cli("train", "--resume", str(run), "--quiet", "--set", "train.epochs=3")
    assert status == 0, err
    assert json.loads((run / "model.json").read_text())["run_id"]  # it has one from now on


# -- the ragged-labels CIFAR batch -------------------------------------------------------------


@pytest.mark.parametrize("labels", [[1, [2, 3], 4, 5], [[1], [2], [3], [4]], np.array([1, 2, 3], dtype=object)],
                         ids=["ragged", "nested", "short-object-array"])
def test_ragged_cifar_labels_are_one_clean_error(tmp_path, labels):
    from vaelab.data.cifar import unpickle_batch

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": labels}))
    with pytest.raises(VaelabError, match="labels"):
        unpickle_batch(path)
