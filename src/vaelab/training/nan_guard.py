"""The NaN guard: what happens when a loss or a gradient is not finite.

Policies (train.nan_policy): ``raise`` stops with a diagnosis (the last good checkpoint
kept), ``skip`` drops the batch and goes on, ``rollback`` restores the state after the last
good epoch and halves the learning rate (up to MAX_ROLLBACKS times in a row).

On CPU every step is checked (free there). On CUDA a per-step check would stall the GPU,
so flags accumulate on the device and are read every ``check_every`` steps, while the
fused optimizer skips a non-finite step by itself (found_inf).
"""

from __future__ import annotations

import torch

from ..errors import VaelabError
from ..rundir import checkpoint_paths

MAX_ROLLBACKS = 10  # consecutive rollbacks (the lr halved each time) before giving up


class TrainingDiverged(VaelabError):
    """The loss or a gradient became non-finite and the NaN policy is 'raise'."""


class RolledBack(Exception):
    """The rollback policy restored the last good state: the epoch starts again."""


class NanGuard:
    """Checks each step of ``trainer`` and applies its config's NaN policy."""

    def __init__(self, trainer, check_every: int):
        self.trainer = trainer
        self.check_every = check_every
        self.deferred = check_every > 1
        self.flags = self.norm_max = None

    def start_epoch(self, device: torch.device) -> None:
        if self.deferred:  # non-finite steps, the images they held, and the largest gradient norm
            self.flags = torch.zeros(2, device=device, dtype=torch.int64)
            self.norm_max = torch.zeros((), device=device)

    def due(self, step: int, first: int, stopping: bool) -> bool:
        """Whether the device-side tallies are read before this step."""
        return self.deferred and step > first and (step % self.check_every == 0 or stopping)

    def loss_ok(self, out, x: torch.Tensor, beta: float, data_parallel: bool) -> bool:
        """Before backward, checked at once where that is free; False: skip this batch.
        (With DDP every rank must run backward: a non-finite loss shows in the gradient.)"""
        if self.deferred or data_parallel or torch.isfinite(out.loss):
            return True
        self.non_finite("loss", x, beta)
        return False

    def gradient_ok(self, out, norm: torch.Tensor, x: torch.Tensor, beta: float, optimizer):
        """After backward: False means skip this batch. Deferred: a device tensor saying
        whether the step was finite, with the fused optimizer told to skip it if not."""
        if self.deferred:
            ok = torch.isfinite(out.loss.detach()) & torch.isfinite(norm)
            bad = (~ok).long()
            optimizer.found_inf = bad.float()
            self.flags += torch.stack([bad, bad * x.shape[0]])
            self.norm_max = torch.maximum(self.norm_max, torch.where(ok, norm.detach(), 0.0))
            return ok
        if not torch.isfinite(norm):
            self.non_finite("gradient", x, beta)
            return False
        return True

    def settle(self, seen: int, grad_norm_max: float, x: torch.Tensor, beta: float) -> tuple[int, float]:
        """Read the device-side tallies (one host sync) and apply the policy to what they hold;
        returns the images seen less those of skipped steps, and the largest gradient norm."""
        bad_steps, bad_images = self.flags.tolist()
        grad_norm_max = max(grad_norm_max, float(self.norm_max))
        if bad_steps:
            self.flags.zero_()
            seen -= bad_images
            # the optimizer already skipped those steps; the policy now says what happens next
            self.non_finite(f"loss or gradient in {bad_steps} of the last {self.check_every} steps", x, beta,
                            count=bad_steps)
        return seen, grad_norm_max

    def non_finite(self, what: str, x: torch.Tensor, beta: float, count: int = 1) -> None:
        """Handle ``count`` non-finite losses or gradients: returns when the policy is to skip
        them; raises RolledBack after a rollback, TrainingDiverged otherwise."""
        tr = self.trainer
        policy = tr.config.train.nan_policy
        tr.nan_events += count
        diagnosis = self.diagnose(x, beta)
        tr.optimizer.zero_grad(set_to_none=True)
        if policy == "skip":
            tr.skipped_steps += count
            tr.log(f"WARNING: non-finite {what} in epoch {tr.epoch + 1}; batch skipped ({diagnosis})")
            return
        if policy == "rollback" and tr.good_state is not None and tr.rollbacks < MAX_ROLLBACKS:
            lr, events = tr.optimizer.param_groups[0]["lr"], tr.nan_events
            tensors, meta = tr.good_state
            tr.load_state(tensors, meta)
            for group in tr.optimizer.param_groups:
                group["lr"] = lr * 0.5
            tr.rollbacks += 1
            tr.nan_events = events  # the restored state predates these events; keep the count
            tr.log(f"WARNING: non-finite {what}; rolled back to the state after epoch {tr.epoch} and "
                   f"halved the learning rate to {lr * 0.5:.3g} ({diagnosis})")
            raise RolledBack
        kept = checkpoint_paths(tr.out)
        kept = f"the last good checkpoint {kept[0].name} is kept" if kept else "no checkpoint was written yet"
        if policy == "rollback":
            kept = f"{MAX_ROLLBACKS} rollbacks did not help; {kept}"
        error = TrainingDiverged(
            f"non-finite {what} in epoch {tr.epoch + 1} ({diagnosis}); {kept}. "
            f"Usual fixes: a lower train.lr, train.grad_clip, a variance floor "
            f"(model.variance=relu or softplus with model.variance_eps > 0), or train.nan_policy=skip")
        tr.log_file_only(f"STOPPED: {error}")  # the run directory records why it stopped
        raise error

    @torch.no_grad()
    def diagnose(self, x: torch.Tensor, beta: float) -> str:
        """Which term went non-finite, the smallest decoder variance, the learning rate."""
        model, optimizer = self.trainer.model, self.trainer.optimizer
        parts = [f"lr {optimizer.param_groups[0]['lr']:.3g}"]
        bad_weights = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad_weights:
            parts.append(f"non-finite weights in {bad_weights[0]}")
        # its own generator: diagnosing never moves training's random numbers
        terms = model.elbo_terms(x, generator=torch.Generator(device=x.device).manual_seed(0), at_mean=True)
        if not (torch.isfinite(terms["means"]).all() and torch.isfinite(terms["stds"]).all()):
            parts.append("encoder output non-finite")
        variance = model.likelihood.variance(terms["params_at_mean"])
        if variance is not None:
            parts.append(f"smallest decoder variance {float(variance.min()):.3g}")
        recon = -model.likelihood.log_prob(terms["params_at_mean"], x)
        bad = [name for name, v in (("reconstruction", recon), ("KL", terms["kl"])) if not torch.isfinite(v).all()]
        parts.insert(0, "non-finite term: " + (", ".join(bad) if bad else "none at the posterior mean (gradient overflow)"))
        return "; ".join(parts)
