"""KL-weight (beta) schedules and learning-rate schedules.

All beta schedules answer ``beta_at(t)`` for a fractional epoch t, so the weight moves
smoothly within an epoch; the write-up's rule also learns from each epoch's result.
"""

from __future__ import annotations

import math

import torch

from ..config import TrainConfig


class KLSchedule:
    def __init__(self, t: TrainConfig):
        self.kind = t.kl_schedule
        self.target = t.beta
        self.warmup = t.warmup_epochs
        self.cycle = t.cycle_epochs
        self.step = t.anneal_step
        self.start_rel = t.anneal_start_rel
        self.code_nats = t.anneal_code_nats
        # ae-then-anneal state: the epoch the rise began (None: still an autoencoder), and its cap
        self.start: float | None = None
        self.best_recon = math.inf
        self.measured_cap: float | None = None  # the cap anneal_code_nats set, once the rise began

    @property
    def cap(self) -> float:
        """Where the ae-then-anneal rise stops: beta, or lower where anneal_code_nats set it (a
        resume with another beta moves it: the config's beta stays an upper bound)."""
        return self.target if self.measured_cap is None else min(self.measured_cap, self.target)

    def beta_at(self, t: float) -> float:
        if self.kind == "constant":
            return self.target
        if self.kind == "linear":  # 0 -> target over warmup epochs (Bowman et al. 2016)
            return self.target * min(1.0, t / self.warmup)
        if self.kind == "cyclical":  # Fu et al. 2019: rise over warmup epochs, hold, repeat
            return self.target * min(1.0, (t % self.cycle) / self.warmup)
        if self.start is None:  # ae-then-anneal, still in the autoencoder phase
            return 0.0
        # a rise of `step` per epoch, applied a fraction at every training step
        return min(self.cap, self.step * max(0.0, t - self.start))

    def end_epoch(self, recon_error: float, epoch: int, mean_image_error: float = math.nan,
                  nats_per_error: float = math.nan) -> None:
        """The write-up's rule ("Variational Autoencoder" project page, KL annealing): train
        as an autoencoder until the reconstruction is good, then raise the weight step by
        step. "Good" is stated as: the epoch's reconstruction error (the trainer passes the
        validation images' mean squared error in image space) improved on the best so far by
        less than ``anneal_start_rel`` of it. ``epoch`` counts completed epochs.

        With ``anneal_code_nats`` the cap is set when the rise starts: a code can gain at most
        what the autoencoder explains, (mean image's error - its error) x ``nats_per_error``
        nats per image, worth that / weight at a KL weight; the cap is the weight at which it
        is worth ``anneal_code_nats`` (never above ``beta``). Over noise no code can explain,
        a fixed cap tuned on clean digits makes the code worth a nat or two (docs/findings.md)."""
        if self.kind != "ae-then-anneal" or self.start is not None or not math.isfinite(recon_error):
            return
        best = self.best_recon
        if math.isfinite(best) and best - recon_error <= self.start_rel * abs(best):
            self.start = float(epoch)
            gain = (mean_image_error - recon_error) * nats_per_error
            if self.code_nats > 0 and math.isfinite(gain) and gain > 0:
                self.measured_cap = gain / self.code_nats
        self.best_recon = min(best, recon_error)

    def state(self) -> dict:
        return {"start": self.start, "best_recon": self.best_recon, "cap": self.measured_cap}

    def load_state(self, state: dict, epoch: int) -> None:
        self.best_recon = state["best_recon"]
        self.measured_cap = state.get("cap")  # None: the cap is beta (and older checkpoints have none)
        if "start" in state:
            self.start = state["start"]
        elif state.get("annealing"):  # older checkpoints: the weight stepped once an epoch
            self.start = epoch - state["weight"] / self.step if self.step > 0 else float(epoch)
        else:
            self.start = None


def make_lr_scheduler(optimizer: torch.optim.Optimizer, t: TrainConfig):
    """A per-epoch scheduler, or None for a constant rate."""
    if t.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(t.epochs, 1))
    if t.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=t.lr_step_epochs, gamma=t.lr_gamma)
    if t.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=t.lr_gamma,
                                                          patience=max(1, t.patience // 2))
    return None


#: scheduler settings that come from the config, never from a checkpoint: a checkpoint says
#: where the schedule stands (its epoch, the current rates, the plateau's best), the config
#: what shape it has, so a resume with more epochs (or another step period) follows the config
_FROM_CONFIG = ("T_max", "step_size", "gamma", "factor", "patience")


def load_lr_state(scheduler, state: dict) -> None:
    """Restore a checkpoint's lr-scheduler state under the current config's settings.

    With an unchanged config this is the saved state exactly (a bit-identical resume). A
    cosine schedule whose length changed moves the rate onto the new curve at this epoch,
    lr = eta_min + (lr0 - eta_min) (1 + cos(pi epoch / epochs)) / 2: torch steps the cosine
    rate recursively from the previous one, which would carry the old curve along (and, past
    its end, back up).
    """
    scheduler.load_state_dict({k: v for k, v in state.items() if k not in _FROM_CONFIG})
    if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and state.get("T_max") != scheduler.T_max:
        eta_min, progress = scheduler.eta_min, scheduler.last_epoch / scheduler.T_max
        rates = [eta_min + (base - eta_min) * (1 + math.cos(math.pi * progress)) / 2 for base in scheduler.base_lrs]
        for group, lr in zip(scheduler.optimizer.param_groups, rates):
            group["lr"] = lr
        scheduler._last_lr = rates


class EarlyStopping:
    """Stop after ``patience`` epochs without an improvement of at least ``min_delta``."""

    def __init__(self, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.best = math.inf
        self.bad_epochs = 0

    def update(self, value: float) -> bool:
        """Record this epoch's monitored loss; True when training should stop."""
        if value < self.best - self.min_delta:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
