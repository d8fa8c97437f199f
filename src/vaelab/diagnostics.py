"""Is the model using its latent code, and did training misbehave? Said plainly.

Posterior collapse has three faces, each checked here:

- the KL term is near zero: q(z|x) is the prior, so z carries (almost) no information
  about x (the mutual information I(x; z) is at most the average KL);
- no latent unit is active: the posterior mean does not move with x (Burda et al.'s
  active units, Cov_x(E_q[z]) > 0.01);
- the decoder ignores z: decoding different prior draws gives the same image. Measured
  as the variance of the decoder mean over z, as a fraction of the pixel variance of the
  data (both in image space, [0, 1]); a model that uses z explains a good part of it.

Training instability is read back from metrics.jsonl: NaN events and skipped steps (the
trainer's NaN guard), non-finite losses, gradient-norm spikes and exploding posterior
standard deviations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .evaluate import active_dims
from .latent.gaussian import Posterior

#: nats per image: below this the whole code carries less than half a nat about x
KL_NEAR_ZERO = 0.5
#: decoder-mean variance over prior draws of z, as a fraction of the data's pixel variance
Z_SENSITIVITY_THRESHOLD = 0.01
#: completed epochs before collapse is judged at all. A decoder first learns the average image
#: and only then starts to use z: the demo's samples vary by 0.9% of the pixel variance after
#: epoch 1 (under the 1% threshold), 4% after epoch 2 and 7% after epoch 3, so a warning any
#: earlier is noise about a model that has not started, not a diagnosis of one that gave up
COLLAPSE_WARMUP_EPOCHS = 3
#: nats per image: with beta > 0, posterior means identical across images at a KL above this
#: are a dead encoder; below it (and above KL_NEAR_ZERO) the KL term is still pulling them in
DEAD_ENCODER_KL = 5.0
#: reconstructions whose mean squared error is above this fraction of the mean image's
#: have not learned the images (a model that did learns a good deal more than the mean)
MEAN_IMAGE_MARGIN = 0.95
#: an epoch's largest gradient norm this many times the median of the earlier epochs
GRAD_SPIKE_FACTOR = 20.0
#: a posterior standard deviation this large, against a N(0, 1) prior, has blown up
STD_EXPLODED = 10.0


@dataclass
class Finding:
    """One line of a diagnosis: level is 'ok', 'note', 'warning', 'collapse', 'dead-encoder' or 'failed'."""

    level: str
    title: str
    text: str


@dataclass
class Episode:
    """An epoch where training misbehaved: kind is nan, skipped, non-finite, grad-spike or variance."""

    epoch: int
    kind: str
    detail: str


# -- posterior collapse ---------------------------------------------------------------------

def collapse_warmup(epoch: int, beta: float | None = None, t=None) -> str | None:
    """Why collapse is not judged yet after ``epoch`` completed epochs, or None once it is.

    ``t`` is the run's TrainConfig (None: judge by the epoch alone) and ``beta`` the KL weight
    of the epoch. Collapse is a verdict on a model that had its chance to use z under its full
    KL weight, so it waits for COLLAPSE_WARMUP_EPOCHS and for an annealing schedule's first
    rise to end: while beta is still small the KL term is not yet what the run asks for.
    """
    kind = t.kl_schedule if t is not None else "constant"
    if kind in ("linear", "cyclical") and epoch < t.warmup_epochs:
        return f"the KL weight is still rising (epoch {epoch} of a {t.warmup_epochs}-epoch KL warm-up)"
    if kind == "ae-then-anneal" and beta is not None and beta < t.beta:
        return f"the KL weight is still rising (beta {beta:.3g} of {t.beta:g})"
    if epoch < COLLAPSE_WARMUP_EPOCHS:
        return f"only {epoch} epoch(s) trained; collapse is judged from epoch {COLLAPSE_WARMUP_EPOCHS} on"
    return None


def collapse_warning(row: dict, t=None) -> str | None:
    """The trainer's per-epoch check on a metrics row; None when nothing is wrong.

    It is :func:`judge_model` on the row's numbers (``t`` is the run's TrainConfig): the same
    verdicts as the report, said in the log. Epochs in the warm-up are not judged
    (see collapse_warmup), nor is collapse in epochs trained with beta = 0.
    """
    epoch = row.get("epoch", COLLAPSE_WARMUP_EPOCHS)
    if epoch < COLLAPSE_WARMUP_EPOCHS:
        return None
    kl = row.get("val_kl")
    if not _finite(kl):
        kl = row.get("train_kl")
    beta = row.get("beta", 1.0)
    finding = judge_model(kl, row.get("active_units"), beta=1.0 if beta is None else beta,
                          recon_mse=row.get("val_recon_mse"), mean_image_mse=row.get("val_mean_image_mse"),
                          epoch=row.get("epoch"))
    if finding is None or (finding.level == "collapse" and collapse_warmup(epoch, row.get("beta"), t)):
        return None  # while the KL weight still rises, collapse is not judged; a dead encoder is
    return f"{finding.title}: {finding.text}"


def judge_model(kl: float | None, active_units: int | None, beta: float = 1.0,
                recon_mse: float | None = None, mean_image_mse: float | None = None,
                z_sensitivity: float | None = None, epoch: int | None = None) -> Finding | None:
    """Tell apart the ways a VAE fails to use or to learn its code; None when none applies.

    - posterior collapse: the KL term (beta > 0) pushed q(z|x) onto the prior, so the KL is
      near zero; nothing reaches the decoder from x;
    - a dead encoder: the posterior means are the same for every image although nothing
      pulls them together (beta = 0, or a KL above DEAD_ENCODER_KL, which the KL term would
      not leave there): the encoder never learned (e.g. dead ReLUs at initialisation); KL
      annealing cannot help it. With beta > 0 and a KL between the two thresholds the KL
      term is still pulling the posteriors in: that is collapse under way;
    - samples independent of z: the code varies but the decoder ignores it;
    - a failed decoder: the code is in use but the reconstructions are no better than the
      data's mean image (in image space): the model did not learn, whatever its KL.
    """
    at = f" at epoch {epoch}" if epoch is not None else ""
    kl_ok = _finite(kl)
    collapsing = active_units == 0 and kl_ok and kl <= DEAD_ENCODER_KL
    if beta > 0 and kl_ok and (kl < KL_NEAR_ZERO or collapsing):
        units = "no active latent units" if active_units == 0 else f"{active_units} active units"
        size = f"(< {KL_NEAR_ZERO})" if kl < KL_NEAR_ZERO else f"(<= {DEAD_ENCODER_KL:g}, falling)"
        return Finding("collapse", "posterior collapse", f"KL {kl:.3f} nats/image {size}{at}, {units}: "
                       f"the KL term pushed q(z|x) onto the prior and the decoder makes one image for every z. "
                       f"Try KL annealing (train.kl_schedule=ae-then-anneal or linear), free bits "
                       f"(train.free_bits), a smaller decoder, or a narrower decoder (a fixed Gaussian sigma as wide "
                       f"as the data makes the reconstruction term weak against the KL)")
    if active_units == 0:
        why = ("the KL weight is 0" if beta == 0 else f"the KL is {kl:.2f} nats/image, far from 0" if kl_ok
               else "the KL is not finite")
        return Finding("dead-encoder", "dead encoder", f"the posterior means are the same for every image{at} "
                       f"although nothing pulls them together ({why}): the encoder never learned to read the "
                       f"image, so KL annealing will not help. Usual causes: ReLU units dead from the start "
                       f"(vaelab's conv networks start from He initialisation), a learning rate too high, no "
                       f"normalisation; try another train.seed, a lower train.lr, model.batch_norm=true or "
                       f"model.activation=leaky_relu")
    if _finite(z_sensitivity) and z_sensitivity < Z_SENSITIVITY_THRESHOLD and beta > 0:
        return Finding("collapse", "samples independent of z", f"decoding different prior draws varies the image "
                       f"by {100 * z_sensitivity:.2f}% of the data's pixel variance (< "
                       f"{100 * Z_SENSITIVITY_THRESHOLD:g}%){at}: the decoder ignores z. Try KL annealing, free bits "
                       f"or a smaller decoder")
    if _finite(recon_mse) and _finite(mean_image_mse) and mean_image_mse > 0 and \
            recon_mse >= MEAN_IMAGE_MARGIN * mean_image_mse:
        return Finding("failed", "reconstructions no better than the mean image",
                       f"mean squared error {recon_mse:.4g} per pixel in [0, 1]{at}, against {mean_image_mse:.4g} "
                       f"for the data's mean image (PSNR {psnr(recon_mse):.1f} vs {psnr(mean_image_mse):.1f} dB): the "
                       f"model has not learned the images, whatever its KL. Check the learning rate (lower "
                       f"train.lr), a learned variance's start and floor (model.logvar_init_bias, "
                       f"model.variance_eps), the initialisation (another train.seed), and train longer")
    return None


def latent_spread(mean: torch.Tensor, std: torch.Tensor) -> dict:
    """Min, max and mean of posterior means and standard deviations over units and images."""
    return {"latent_mean_min": float(mean.min()), "latent_mean_max": float(mean.max()),
            "latent_mean_mean": float(mean.mean()), "latent_std_min": float(std.min()),
            "latent_std_max": float(std.max()), "latent_std_mean": float(std.mean())}


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error on images in [0, 1]."""
    return -10.0 * math.log10(mse) if mse > 0 else math.inf


@torch.no_grad()
def decoder_z_sensitivity(model, transform, data_images: torch.Tensor, n: int = 64,
                          seed: int = 0) -> float:
    """Variance of the decoded image over n prior draws of z / pixel variance of the data.

    ``data_images`` are uint8 (N, C, H, W). 0 means every z decodes to the same image.
    """
    was_training = model.training
    model.eval()
    try:
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        decoded = transform.to_images(model.sample_prior(n, generator=gen)).float().cpu()
    finally:
        model.train(was_training)
    data = data_images[:2000].float().cpu() / 255.0
    data_var = float(data.var(0).mean()) if len(data) > 1 else 0.0
    if data_var <= 0:
        return float("nan")
    return float(decoded.var(0).mean()) / data_var


def latent_activity(means: torch.Tensor, stds: torch.Tensor, kl_per_dim=None) -> dict:
    """Per-dimension KL (nats, averaged over images), Var_x of the posterior mean, activity.

    ``kl_per_dim`` is the model's own (evaluate.ElboPass: right for any prior); without it,
    the KL against N(0, I) of the diagonal Gaussians given."""
    means, stds = means.double(), stds.double()
    if kl_per_dim is None:
        kl_per_dim = Posterior(means, 2 * stds.log()).kl_per_dim().mean(0)
    kl_per_dim = torch.as_tensor(kl_per_dim, dtype=torch.float64)
    var_of_means = means.var(0) if len(means) > 1 else torch.zeros(means.shape[1], dtype=torch.float64)
    active = active_dims(means)
    return {"kl_per_dim": kl_per_dim.tolist(), "var_of_means": var_of_means.tolist(),
            "active": active.tolist(), "active_units": int(active.sum())}


def diagnose_model(kl: float | None, active_units: int | None, latent_dim: int,
                   z_sensitivity: float | None = None, beta: float = 1.0, warmup: str | None = None,
                   recon_mse: float | None = None, mean_image_mse: float | None = None,
                   bits_per_dim: float | None = None, fixed_variance: bool = False) -> list[Finding]:
    """Findings about a finished model from its evaluated numbers (see :func:`judge_model`).

    ``warmup`` is collapse_warmup's reason when training ended inside the warm-up: the signs
    are then a warning, not a verdict, as in the training log (which judged no epoch).
    ``bits_per_dim`` above 8 is a density worse than a uniform 8-bit model: a failure for a
    learned variance, a note for a fixed one (a weighting, e.g. a mean-squared-error loss).
    """
    findings = []
    if beta == 0:
        findings.append(Finding("note", "no KL pressure", "trained with beta = 0 (a plain autoencoder): "
                                "posterior collapse does not apply"))
    verdict = judge_model(kl, active_units, beta, recon_mse, mean_image_mse, z_sensitivity)
    if verdict is not None and warmup and verdict.level in ("collapse", "dead-encoder"):
        findings.append(Finding("warning", "too early to judge collapse", f"training ended in the warm-up "
                                f"({warmup}): {verdict.title}: {verdict.text}. Train longer before reading "
                                f"this as a verdict."))
    elif verdict is not None:
        findings.append(verdict)
    if _finite(bits_per_dim) and bits_per_dim > 8.0:
        text = (f"{bits_per_dim:.2f} bits/dim: as a density of 8-bit pixels it is worse than a uniform model "
                f"(8 bits/dim)")
        if fixed_variance:
            findings.append(Finding("note", "a weak density", text + "; its fixed variance is a loss weighting "
                                    "(e.g. a mean squared error), not a fit to the pixels"))
        else:
            findings.append(Finding("failed", "worse than a uniform 8-bit model", text + ". A learned variance "
                                    "should beat it easily: check its start (model.logvar_init_bias), its floor "
                                    "(model.variance_eps) and the learning rate"))
    if verdict is None:
        parts = []
        if _finite(kl):
            parts.append(f"KL {kl:.2f} nats/image")
        if active_units is not None:
            parts.append(f"{active_units} of {latent_dim} latent units active")
        if _finite(z_sensitivity):
            parts.append(f"z moves the decoded image by {100 * z_sensitivity:.1f}% of the data's pixel variance")
        if _finite(recon_mse) and _finite(mean_image_mse):
            parts.append(f"reconstructions {psnr(recon_mse):.1f} dB PSNR against {psnr(mean_image_mse):.1f} dB "
                         f"for the mean image")
        if not any(f.level == "failed" for f in findings):
            findings.append(Finding("ok", "the latent code is in use", ", ".join(parts)))
        if active_units is not None and 0 < active_units < latent_dim:
            findings.append(Finding("note", "inactive units", f"{latent_dim - active_units} of {latent_dim} "
                                    f"latent units are inactive (the usual partial collapse of unused dimensions)"))
    return findings


# -- training instability -------------------------------------------------------------------

def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def instability_episodes(rows: list[dict]) -> list[Episode]:
    """Epochs with NaN events, skipped steps, non-finite losses, gradient spikes or exploding
    posterior standard deviations, from metrics.jsonl rows (in epoch order)."""
    episodes = []
    nan_before = skipped_before = 0
    grad_history: list[float] = []
    for row in rows:
        epoch = row.get("epoch", len(episodes))
        nan_events, skipped = row.get("nan_events") or 0, row.get("skipped_steps") or 0
        if nan_events > nan_before:
            episodes.append(Episode(epoch, "nan", f"{nan_events - nan_before} non-finite loss or gradient event(s)"))
        if skipped > skipped_before:
            episodes.append(Episode(epoch, "skipped", f"{skipped - skipped_before} batch(es) skipped"))
        nan_before, skipped_before = max(nan_before, nan_events), max(skipped_before, skipped)
        bad = [k for k in ("train_loss", "val_elbo") if k in row and not _finite(row[k])]
        if bad:
            episodes.append(Episode(epoch, "non-finite", f"non-finite {', '.join(bad)}"))
        grad = row.get("grad_norm_max")
        if _finite(grad):
            if len(grad_history) >= 3:
                median = sorted(grad_history)[len(grad_history) // 2]
                if median > 0 and grad > GRAD_SPIKE_FACTOR * median:
                    episodes.append(Episode(epoch, "grad-spike", f"largest gradient norm {grad:.3g}, "
                                            f"{grad / median:.0f}x the median of earlier epochs"))
            grad_history.append(grad)
        std_max = row.get("latent_std_max")
        if _finite(std_max) and std_max > STD_EXPLODED:
            episodes.append(Episode(epoch, "variance", f"a posterior standard deviation of {std_max:.3g} "
                                    f"(> {STD_EXPLODED:g} against a N(0, 1) prior)"))
    return episodes


def diagnose_training(rows: list[dict]) -> list[Finding]:
    """Findings about the training curves: episodes, or a plain 'none'."""
    if not rows:
        return [Finding("note", "no training metrics", "metrics.jsonl is empty or missing")]
    episodes = instability_episodes(rows)
    if not episodes:
        return [Finding("ok", "stable training", f"{len(rows)} epochs with no NaN events, skipped steps, "
                        f"non-finite losses, gradient spikes or exploding variances")]
    listed = "; ".join(f"epoch {e.epoch}: {e.detail}" for e in episodes[:10])
    more = f" (and {len(episodes) - 10} more)" if len(episodes) > 10 else ""
    return [Finding("warning", f"{len(episodes)} unstable episode(s)", listed + more)]
