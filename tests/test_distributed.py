"""Data-parallel training: 2 CPU processes (gloo) give the result of one process with the
same global batch, only rank 0 writes the run directory, and a run resumes on another
number of processes."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from vaelab import distributed
from vaelab.cli import main
from vaelab.presets import load_preset
from vaelab.training.trainer import train

# 540 training images in global batches of 41: every batch splits unevenly (21 + 20), and
# the last one (7 images) too, so the shard weighting is exercised on every step
SETTINGS = ["data.limit=600", "train.batch_size=41", "model.hidden=64", "model.latent_dim=4",
            "train.log_latent_stats=false"]


def _config(epochs):
    config = load_preset("demo")
    config.apply_overrides(SETTINGS + [f"train.epochs={epochs}"])
    return config


def _cli_sets(epochs):
    args = []
    for item in SETTINGS + [f"train.epochs={epochs}"]:
        args += ["--set", item]
    return args


def _spawn(*args):
    """`vaelab train ... --nproc 2` in a fresh interpreter, as a user would run it."""
    done = subprocess.run([sys.executable, "-m", "vaelab", "train", *args, "--nproc", "2", "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _weights(run):
    return load_file(str(run / "model.safetensors"))


def _assert_same_weights(a, b, atol=1e-5):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst < atol, f"weights differ by up to {worst}"


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_two_processes_match_one_and_resume_across_world_sizes(tmp_path):
    # reference: one process, epoch 1, then resumed in one process to epoch 2
    single = tmp_path / "single"
    train(_config(1), single, progress=False)
    after_one = tmp_path / "after-one"
    shutil.copytree(single, after_one)
    train(_config(2), single, resume=True, progress=False)

    # two processes from scratch for one epoch, then one process resumes it
    multi = tmp_path / "multi"
    done = _spawn("--preset", "demo", *_cli_sets(1), "--out", str(multi))
    assert done.stdout.count("run directory") == 1  # rank 0 speaks; the others stay quiet
    first = _rows(multi)
    assert len(first) == 1
    reference = _rows(single)[0]
    for key in ("train_loss", "train_recon", "train_kl", "val_elbo", "grad_norm_max"):
        assert first[0][key] == pytest.approx(reference[key], rel=1e-5), key
    log = (multi / "train.log").read_text()
    assert log.count("epoch 1:") == 1  # only rank 0 wrote the log
    _assert_same_weights(multi, after_one)
    assert main(["train", "--resume", str(multi), *_cli_sets(2), "--quiet"]) == 0
    _assert_same_weights(multi, single)

    # and the other way: a one-process checkpoint resumed on two processes
    _spawn("--resume", str(after_one), *_cli_sets(2))
    assert [r["epoch"] for r in _rows(after_one)] == [1, 2]
    _assert_same_weights(after_one, single)


@pytest.mark.parametrize("n", [1, 2, 7, 41, 128])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_a_batch_once_and_evenly(n, world):
    parts = [distributed.shard(n, distributed.Context(rank, world, rank)) for rank in range(world)]
    covered = torch.cat([torch.arange(n)[p] for p in parts])
    assert covered.tolist() == list(range(n))  # contiguous, in order, nothing twice or missed
    sizes = [p.stop - p.start for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_nproc_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["train", "--preset", "demo", "--out", str(tmp_path / "r"), "--nproc", "0"]) == 2
    assert "--nproc must be at least 1" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun
    assert main(["train", "--preset", "demo", "--out", str(tmp_path / "r"), "--nproc", "2"]) == 2
    assert "leave it out under torchrun" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("family", [
    ["model.flow_steps=1", "model.flow_hidden=[16]", "model.prior=mog", "model.prior_components=5"],
    ["model.family=ladder", "model.ladder_dims=[4]", "model.hidden=[64,32]", "model.prior=vamp",
     "model.prior_components=5"],
    # labelled images join every batch after the unlabelled ones: the shards hold different mixes
    ["model.family=m2", "data.labelled=50", "train.labelled_batch=12", "train.class_weight=3"],
], ids=["iaf-mog", "ladder-vamp", "m2"])
def test_families_train_the_same_on_two_processes(family, tmp_path):
    """A flow's noise, a Monte Carlo KL and M2's labelled images shard like the plain VAE's."""
    single = tmp_path / "single"
    config = _config(1)
    config.apply_overrides(family)
    train(config, single, progress=False)
    multi = tmp_path / "multi"
    sets = []
    for item in family:
        sets += ["--set", item]
    _spawn("--preset", "demo", *_cli_sets(1), *sets, "--out", str(multi))
    reference, first = _rows(single)[0], _rows(multi)[0]
    for key in ("train_loss", "train_kl", "val_elbo"):
        assert first[key] == pytest.approx(reference[key], rel=1e-5), key
    # M2's classifier sees border pixels whose gradients are a few times Adam's eps: there the
    # float32 sums' order (one process or two) moves a step by ~1 % of the learning rate.
    # In float64 the sharded gradient is exact (tests/test_semi_supervised.py).
    _assert_same_weights(multi, single, atol=5e-5 if "model.family=m2" in family else 1e-5)


def test_leave_destroys_only_the_group_vaelab_joined(monkeypatch):
    """train() leaves the group that distributed.init() created, never a caller's own."""
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(distributed._free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)  # the caller's own group
    try:
        distributed.leave(finished=True)
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
    monkeypatch.setattr(distributed, "launched", lambda: True)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    distributed.init("cpu")  # vaelab's own group
    assert dist.is_initialized()
    distributed.leave(finished=True)
    assert not dist.is_initialized()
