"""Objectives and training controls: KL schedules, free bits, IWAE, early stopping,
autoencoder mode, gradient clipping and learning-rate schedules.

Schedules are checked value by value; the rest by training tiny models on the built-in
MNIST sample and reading what the trainer recorded.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from vaelab.config import Config, ModelConfig, TrainConfig
from vaelab.errors import VaelabError
from vaelab.model import VAE
from vaelab.training.schedules import EarlyStopping, KLSchedule
from vaelab.training.trainer import train


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(*overrides: str) -> Config:
    c = Config()
    c.apply_overrides(["data.name=mnist-sample", "data.limit=330", "model.hidden=32", "model.latent_dim=3",
                       "train.epochs=2", "train.batch_size=100", "train.log_latent_stats=false", *overrides])
    return c.validate()


def run(tmp_path, *overrides: str, name: str = "run", callbacks=None) -> list[dict]:
    out = train(tiny_config(*overrides), tmp_path / name, progress=False, callbacks=callbacks or [])
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def small_vae(latent: int = 3) -> VAE:
    torch.manual_seed(0)
    return VAE(ModelConfig(latent_dim=latent, hidden=[16]), (1, 6, 6))


# -- KL schedules ------------------------------------------------------------------------------

def test_linear_warmup_values():
    s = KLSchedule(TrainConfig(kl_schedule="linear", warmup_epochs=10, beta=0.5))
    assert [s.beta_at(t) for t in (0, 2.5, 5, 10, 40)] == [0.0, 0.125, 0.25, 0.5, 0.5]


def test_cyclical_values_rise_hold_and_restart():
    s = KLSchedule(TrainConfig(kl_schedule="cyclical", cycle_epochs=4, warmup_epochs=2, beta=1.0))
    assert [s.beta_at(t) for t in (0, 1, 2, 3, 3.9, 4, 5, 6.5, 8)] == [0, 0.5, 1, 1, 1, 0, 0.5, 1, 0]
    with pytest.raises(VaelabError, match="never reach"):
        tiny_config("train.kl_schedule=cyclical", "train.cycle_epochs=3", "train.warmup_epochs=5")


def test_constant_schedule_is_beta_throughout():
    s = KLSchedule(TrainConfig(beta=0.3))
    assert {s.beta_at(t) for t in (0, 0.5, 7)} == {0.3}


def ae_then_anneal_weights(recons, step=0.3, beta=1.0, rel=0.01):
    s = KLSchedule(TrainConfig(kl_schedule="ae-then-anneal", anneal_step=step, beta=beta, anneal_start_rel=rel))
    weights = []
    for recon in recons:
        weights.append(s.beta_at(len(weights) + 1))  # the weight at the end of this epoch
        s.end_epoch(recon, len(weights))
    return weights


def test_ae_then_anneal_waits_for_a_good_reconstruction_then_rises_to_the_cap():
    # 100 -> 90 -> 80: 10 % better each; 79.5 is 0.6 % better (< 1 %): the rise starts after
    # epoch 4 and adds 0.3 an epoch, capped at 1
    assert ae_then_anneal_weights([100, 90, 80, 79.5, 70, 60, 50, 40, 30]) == \
        pytest.approx([0, 0, 0, 0, 0.3, 0.6, 0.9, 1.0, 1.0])
    # a worse epoch starts it too; once rising, a better reconstruction does not stop it; cap train.beta
    assert ae_then_anneal_weights([10, 11, 1, 0.5, 0.1], step=0.25, beta=0.6) == \
        pytest.approx([0, 0, 0.25, 0.5, 0.6])
    # the criterion is relative: a 2 % improvement starts it at rel=0.05, not at rel=0.01
    assert ae_then_anneal_weights([100, 98, 97], step=0.5, rel=0.05) == pytest.approx([0, 0, 0.5])
    assert ae_then_anneal_weights([100, 98, 96], step=0.5, rel=0.01) == pytest.approx([0, 0, 0])


def test_ae_then_anneal_rises_a_fraction_at_every_step():
    s = KLSchedule(TrainConfig(kl_schedule="ae-then-anneal", anneal_step=0.2))
    for epoch, recon in enumerate((50, 40, 40), start=1):
        s.end_epoch(recon, epoch)
    assert s.start == 3
    assert [s.beta_at(3 + f) for f in (0, 0.25, 0.5, 1)] == pytest.approx([0, 0.05, 0.1, 0.2])


def test_ae_then_anneal_state_survives_a_checkpoint_round_trip():
    s = KLSchedule(TrainConfig(kl_schedule="ae-then-anneal", anneal_step=0.2))
    for epoch, recon in enumerate((50, 40, 45, 30), start=1):
        s.end_epoch(recon, epoch)
    restored = KLSchedule(TrainConfig(kl_schedule="ae-then-anneal", anneal_step=0.2))
    restored.load_state(json.loads(json.dumps(s.state())), epoch=4)
    assert restored.beta_at(4.5) == s.beta_at(4.5) == pytest.approx(0.3)
    fresh = KLSchedule(TrainConfig(kl_schedule="ae-then-anneal"))
    fresh.load_state(json.loads(json.dumps(fresh.state())), epoch=0)  # best_recon = inf still round-trips
    assert fresh.best_recon == math.inf and fresh.start is None
    # a checkpoint written before the rule changed (weight stepped once an epoch) resumes on the same weight
    old = KLSchedule(TrainConfig(kl_schedule="ae-then-anneal", anneal_step=0.2))
    old.load_state({"weight": 0.4, "annealing": True, "best_recon": 30.0}, epoch=5)
    assert old.beta_at(5) == pytest.approx(0.4)


def test_ae_then_anneal_caps_the_weight_where_the_autoencoders_gain_is_worth_code_nats():
    # the rise starts after epoch 3 (0.020 -> 0.0199: under 1 % better); the autoencoder explains
    # 0.05 - 0.0199 = 0.0301 of squared error a pixel, 784 / (2 * 392) = 1 nat each: 0.0301 nats,
    # worth 50 nats at a weight of 0.000602, under train.beta = 0.001
    def cap(mean_image, beta=0.001, code_nats=50.0):
        s = KLSchedule(TrainConfig(kl_schedule="ae-then-anneal", anneal_step=0.002, beta=beta,
                                   anneal_code_nats=code_nats))
        for epoch, recon in enumerate((0.03, 0.020, 0.0199), start=1):
            assert s.cap == beta  # set once, when the rise starts
            s.end_epoch(recon, epoch, mean_image, 784 / (2 * 392.0))
        assert s.start == 3
        return s.cap, s.beta_at(10)

    assert cap(0.05) == pytest.approx((0.0301 / 50, 0.0301 / 50))
    assert cap(0.1) == pytest.approx((0.001, 0.001))  # a gain worth more than 50 nats at beta: beta
    assert cap(0.05, code_nats=0) == pytest.approx((0.001, 0.001))  # off: beta, as before
    assert cap(0.0199) == pytest.approx((0.001, 0.001))  # nothing explained: no rule to apply
    assert cap(float("nan")) == pytest.approx((0.001, 0.001))
    s = KLSchedule(TrainConfig(kl_schedule="ae-then-anneal", beta=0.001, anneal_code_nats=50.0))
    s.measured_cap = 0.0002
    restored = KLSchedule(TrainConfig(kl_schedule="ae-then-anneal", beta=0.001, anneal_code_nats=50.0))
    restored.load_state(json.loads(json.dumps(s.state())), epoch=4)
    assert restored.cap == 0.0002
    # a resume with another beta: beta stays the upper bound, and an unset cap follows it
    lower = KLSchedule(TrainConfig(kl_schedule="ae-then-anneal", beta=0.0001, anneal_code_nats=50.0))
    lower.load_state(json.loads(json.dumps(s.state())), epoch=4)
    assert lower.cap == 0.0001
    unset = KLSchedule(TrainConfig(kl_schedule="ae-then-anneal", beta=0.5))
    unset.load_state(json.loads(json.dumps(KLSchedule(TrainConfig(kl_schedule="ae-then-anneal")).state())), epoch=4)
    assert unset.cap == 0.5


def test_trainer_sets_the_cap_from_the_validation_gain(tmp_path):
    rows = run(tmp_path, "data.transform=scale", "model.likelihood=gaussian", "model.sigma=0.5",
               "model.sigmoid_mean=true", "train.batch_size=10", "train.lr=0.01", "train.kl_schedule=ae-then-anneal", "train.anneal_step=1", "train.anneal_start_rel=1",
               "train.beta=1", "train.anneal_code_nats=30", "train.epochs=4")
    # the rise starts after epoch 2, its cap from epoch 2's validation images (28 x 28 pixels)
    gain = (rows[1]["val_mean_image_mse"] - rows[1]["val_recon_mse"]) * 784 / (2 * 0.5 ** 2)
    assert rows[0]["beta_cap"] == rows[1]["beta_cap"] == 1.0 and gain > 0
    assert rows[2]["beta_cap"] == pytest.approx(gain / 30, rel=1e-9) and gain / 30 < 1.0  # the rule lowered it
    assert rows[3]["beta"] == pytest.approx(rows[3]["beta_cap"])


def test_anneal_code_nats_needs_a_fixed_variance_gaussian_on_the_images():
    from vaelab.errors import VaelabError

    with pytest.raises(VaelabError, match="model.likelihood=gaussian, model.variance=fixed"):
        tiny_config("train.kl_schedule=ae-then-anneal", "train.anneal_code_nats=40")  # Bernoulli
    with pytest.raises(VaelabError, match="anneal_code_nats"):
        tiny_config("train.anneal_code_nats=-1")
    tiny_config("data.transform=scale", "model.likelihood=gaussian", "train.kl_schedule=ae-then-anneal",
                "train.anneal_code_nats=40")


def test_trainer_applies_ae_then_anneal(tmp_path):
    # a criterion no epoch can miss: epoch 1 sets the best, epoch 2 is good enough, then the weight rises
    rows = run(tmp_path, "train.kl_schedule=ae-then-anneal", "train.anneal_step=0.25", "train.anneal_start_rel=1",
               "train.epochs=4")
    assert [r["beta"] for r in rows] == pytest.approx([0, 0, 0.25, 0.5])
    for r in rows[:2]:  # autoencoder epochs: the loss is the reconstruction alone
        assert r["train_loss"] == pytest.approx(r["train_recon"], rel=1e-9)
    assert rows[3]["train_loss"] > rows[3]["train_recon"]


# -- free bits, autoencoder mode ---------------------------------------------------------------

def encoder_grads(vae, loss):
    vae.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in vae.posterior_head.parameters()])


def test_free_bits_remove_the_kl_gradient_below_the_floor_only():
    vae = small_vae()
    x = torch.bernoulli(torch.full((8, 1, 6, 6), 0.3))
    gen = torch.Generator()
    recon_only = encoder_grads(vae, vae.loss(x, beta=0.0, generator=gen.manual_seed(1)).loss)
    with_kl = encoder_grads(vae, vae.loss(x, beta=1.0, generator=gen.manual_seed(1)).loss)
    out = vae.loss(x, beta=1.0, free_bits=50.0, generator=gen.manual_seed(1))
    assert float(out.kl_per_dim.max()) < 50.0  # every dimension is under the floor
    floored = encoder_grads(vae, out.loss)
    torch.testing.assert_close(floored, recon_only)  # the floor is a constant: no KL gradient
    assert not torch.allclose(with_kl, recon_only)
    # a floor below every dimension's KL changes nothing
    low = vae.loss(x, beta=1.0, free_bits=1e-6, generator=gen.manual_seed(1))
    assert float(low.kl_per_dim.min()) > 1e-6
    torch.testing.assert_close(encoder_grads(vae, low.loss), with_kl)


def test_autoencoder_mode_trains_without_kl(tmp_path):
    rows = run(tmp_path, "train.beta=0")
    for r in rows:
        assert r["beta"] == 0 and r["train_loss"] == pytest.approx(r["train_recon"], rel=1e-9)
        assert r["train_kl"] > 0  # measured, just not penalised


# -- IWAE ------------------------------------------------------------------------------------

def test_iwae_gradient_is_the_importance_weighted_estimator_with_detached_weights():
    vae = small_vae()
    x = torch.bernoulli(torch.full((5, 1, 6, 6), 0.4))
    k = 7
    gen = torch.Generator()
    out = vae.iwae_loss(x, k, generator=gen.manual_seed(3))
    grads = torch.autograd.grad(out.loss, list(vae.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    # Burda et al. (2016), eq. 14: sum_i w~_i grad log w_i, the normalised weights w~ held constant
    log_w, _ = vae._log_weights(x, *vae._posterior(x), k, generator=gen.manual_seed(3))
    weights = torch.softmax(log_w, 0).detach()
    reference = torch.autograd.grad(-(weights * log_w).sum(0).mean(), list(vae.parameters()))
    for g, r in zip(grads, reference):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    # the bound itself: log mean exp of the same weights
    expected = (torch.logsumexp(log_w, 0) - math.log(k)).mean()
    torch.testing.assert_close(-out.loss.detach(), expected.detach())


def test_iwae_objective_trains(tmp_path):
    rows = run(tmp_path, "train.objective=iwae", "train.iw_samples=5", "train.epochs=3", "train.lr=3e-3")
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["grad_norm_max"]) for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 20  # nats/image: the bound rises
    assert rows[-1]["val_elbo"] > rows[0]["val_elbo"]
    with pytest.raises(VaelabError, match="no KL weight"):
        tiny_config("train.objective=iwae", "train.kl_schedule=linear")


# -- early stopping ----------------------------------------------------------------------------

def test_early_stopping_rule():
    stopper = EarlyStopping(patience=2, min_delta=0.5)
    assert [stopper.update(v) for v in (10, 9, 8.8, 8.7, 7)] == [False, False, False, True, False]


def test_early_stopping_on_training_loss_stops_without_validation_images(tmp_path):
    # no validation images at all: only the training loss can be monitored; min_delta above any
    # change makes every epoch after the first a bad one
    rows = run(tmp_path, "data.val_fraction=0", "train.early_stopping=train", "train.patience=2",
               "train.min_delta=1e9", "train.epochs=10")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "early stopping" in log and "training loss" in log
    with pytest.raises(VaelabError, match="val_fraction=0"):
        tiny_config("data.val_fraction=0", "train.early_stopping=val")


def test_early_stopping_on_validation_loss_stops(tmp_path):
    rows = run(tmp_path, "train.early_stopping=val", "train.patience=1", "train.min_delta=1e9", "train.epochs=10")
    assert [r["epoch"] for r in rows] == [1, 2]


# -- gradient clipping and learning-rate schedules -----------------------------------------------

class GradNormRecorder:
    """Records the global gradient norm right before every optimizer step (after clipping)."""

    def __init__(self):
        self.norms = []

    def on_train_start(self, trainer):
        def hook(optimizer, args, kwargs):
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

        trainer.optimizer.register_step_pre_hook(hook)


def test_gradient_clipping_bounds_the_norm(tmp_path):
    recorder = GradNormRecorder()
    rows = run(tmp_path, "train.grad_clip=0.5", callbacks=[recorder])
    assert len(recorder.norms) == 2 * 3  # two epochs of three batches
    assert max(recorder.norms) <= 0.5 * (1 + 1e-5)
    assert max(r["grad_norm_max"] for r in rows) > 0.5  # before clipping they were larger


def test_step_and_cosine_learning_rate_schedules(tmp_path):
    rows = run(tmp_path, "train.lr_schedule=step", "train.lr_step_epochs=2", "train.lr_gamma=0.5",
               "train.epochs=5", name="step")
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4])
    rows = run(tmp_path, "train.lr_schedule=cosine", "train.epochs=4", name="cosine")
    assert [r["lr"] for r in rows] == pytest.approx([1e-3 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])


def test_cosine_schedule_follows_the_epochs_of_a_resumed_run(tmp_path):
    """Extended on resume from 2 to 4 epochs, the rate moves onto the 4-epoch curve; before,
    the 2-epoch curve went on (0 at epoch 2, then up again)."""
    out = train(tiny_config("train.lr_schedule=cosine", "train.epochs=2"), tmp_path / "run", progress=False,
                callbacks=[])
    train(tiny_config("train.lr_schedule=cosine", "train.epochs=4"), out, resume=True, progress=False, callbacks=[])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    def cosine(epoch: int, epochs: int) -> float:
        return 1e-3 * (1 + math.cos(math.pi * epoch / epochs)) / 2

    assert [r["lr"] for r in rows] == pytest.approx([cosine(0, 2), cosine(1, 2), cosine(2, 4), cosine(3, 4)])
    assert "cosine learning-rate schedule now spans 4 epochs (was 2)" in (out / "train.log").read_text()


def test_step_schedule_takes_a_new_period_on_resume(tmp_path):
    out = train(tiny_config("train.lr_schedule=step", "train.lr_step_epochs=10"), tmp_path / "run",
                progress=False, callbacks=[])
    train(tiny_config("train.lr_schedule=step", "train.lr_step_epochs=3", "train.epochs=4"), out, resume=True,
          progress=False, callbacks=[])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4])


def test_plateau_schedule_lowers_the_rate_when_validation_stalls(tmp_path):
    # a rate so small that the validation loss cannot improve by torch's relative threshold
    # (1e-4): after patience // 2 = 1 epoch without improvement beyond that, the rate halves
    rows = run(tmp_path, "train.lr_schedule=plateau", "train.patience=2", "train.lr_gamma=0.5", "train.lr=1e-6",
               "train.epochs=5")
    assert [r["lr"] for r in rows] == pytest.approx([1e-6, 1e-6, 1e-6, 5e-7, 5e-7])
