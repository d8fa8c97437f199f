"""Training-time outputs: fixed-noise sample grids and their GIF, latent statistics every N
steps, TensorBoard, MLflow, a collapse check.

Every callback here only reads the model (in eval mode, without gradients) and draws its
noise from its own generator, so turning one on never changes what training computes.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import rundir, tracking
from ..diagnostics import latent_spread
from ..errors import VaelabError
from ..evaluate import active_units
from ..images import decode_images
from ..latent.priors import learned_prior_draws
from ..rundir.progress import PROGRESS_DIR, STEPS_FILE, read_step_stats, write_progress_gif

TENSORBOARD_DIR = "tensorboard"
NOISE_SEED = 4321  # the fixed z of the progress grids: the same in every run and every epoch
GRID_IMAGES = 64


def fixed_noise(latent_dim: int, n: int = GRID_IMAGES, seed: int = NOISE_SEED) -> torch.Tensor:
    """n draws of z ~ N(0, I) from a generator of their own (CPU, so every device agrees)."""
    return torch.randn((n, latent_dim), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def fixed_codes(model, n: int = GRID_IMAGES, seed: int = NOISE_SEED) -> torch.Tensor:
    """The codes a progress grid decodes: the fixed noise under an N(0, I) prior; under a learned
    prior (mixture, VampPrior) the same draw of it as it is now (component choices and noise
    from ``seed``), so every frame shows the model's own samples, not N(0, I) codes it may
    never see."""
    z = learned_prior_draws(model, n, seed)
    return fixed_noise(model.latent_dim, n, seed) if z is None else z


def monitor_images(trainer):
    """The images training-time checks look at: the validation images, or the training
    images when none are held out."""
    return trainer.val_images if len(trainer.val_images) > 1 else trainer.train_images


def _due(epoch: int, every: int, last: int) -> bool:
    return epoch % every == 0 or epoch == last


# -- progress grids --------------------------------------------------------------------------

class ProgressGrids:
    """Every ``every`` epochs (and after the last), decode the same fixed noise into
    RUN_DIR/progress/epoch-NNNN.png and refresh progress.gif (so an interrupted run has one)."""

    def __init__(self, every: int, n: int = GRID_IMAGES):
        if every < 1:
            raise VaelabError(f"sample grids need an interval of at least 1 epoch, got {every}")
        self.every, self.n = every, n

    def on_train_start(self, trainer) -> None:
        (trainer.out / PROGRESS_DIR).mkdir(exist_ok=True)

    def on_epoch_end(self, trainer, row: dict) -> None:
        if not _due(trainer.epoch, self.every, trainer.config.train.epochs):
            return
        from ..imagegrid import save_grid

        images = decode_images(trainer.model, trainer.data.transform, fixed_codes(trainer.model, self.n))
        save_grid(images, trainer.out / PROGRESS_DIR / f"epoch-{trainer.epoch:04d}.png",
                  nrow=int(math.ceil(math.sqrt(self.n))))
        write_progress_gif(trainer.out)


# -- statistics every N steps ----------------------------------------------------------------

STEP_BATCH = 256  # validation images whose posteriors are summarised


class StepStats:
    """Every ``every`` training steps: the spread of posterior means and standard deviations,
    the KL and the active units on a fixed batch of validation images (training images when
    none are held out), with the KL weight,
    as one line of RUN_DIR/progress/steps.jsonl, and a fixed-noise sample grid
    progress/step-NNNNNNN.png. Collapse and recovery can happen within the first epoch (the
    "Variational Autoencoder" project page watches them batch by batch), where per-epoch
    numbers see only the end."""

    def __init__(self, every: int, n: int = GRID_IMAGES):
        if every < 1:
            raise VaelabError(f"step statistics need an interval of at least 1 step, got {every}")
        self.every, self.n = every, n
        self.x = None

    def on_train_start(self, trainer) -> None:
        folder = trainer.out / PROGRESS_DIR
        folder.mkdir(exist_ok=True)
        images = monitor_images(trainer)
        device = next(trainer.model.parameters()).device
        self.x = trainer.data.transform.fixed(images[:STEP_BATCH].to(device))
        # a resumed run rewrites what came after its checkpoint: drop those lines
        done = trainer.epoch * trainer.steps_per_epoch + (trainer._partial or {}).get("step", 0)
        kept = [r for r in read_step_stats(trainer.out) if r["step"] <= done]
        import json

        (folder / STEPS_FILE).write_text("".join(json.dumps(r) + "\n" for r in kept))

    @torch.no_grad()
    def on_step_end(self, trainer, step: int, beta: float) -> None:
        if step % self.every:
            return
        import json

        from ..imagegrid import save_grid

        model = trainer.model
        was_training = model.training
        model.eval()
        try:
            q = model.encode(self.x)
            mean, std = q.mean.float(), q.std.float()
            row = {"step": step, "epoch": step / trainer.steps_per_epoch, "beta": beta,
                   "kl": float(q.kl_per_dim().sum(-1).mean()),
                   "active_units": active_units(mean),
                   **latent_spread(mean, std)}
        finally:
            model.train(was_training)
        with open(trainer.out / PROGRESS_DIR / STEPS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
        save_grid(decode_images(model, trainer.data.transform, fixed_codes(model, self.n)),
                  trainer.out / PROGRESS_DIR / f"step-{step:07d}.png", nrow=int(math.ceil(math.sqrt(self.n))))


# -- TensorBoard -----------------------------------------------------------------------------

def scalar_tag(key: str) -> str:
    """metrics.jsonl key -> TensorBoard tag: train_loss -> train/loss, beta -> train/beta."""
    for prefix in ("train", "val", "latent"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1:]}"
    if key == "active_units":
        return "val/active_units"
    return f"train/{key}"


class TensorBoardLogger:
    """Scalars of every metrics row, KL per latent dimension, and the fixed-noise sample grid
    (every ``image_every`` epochs), written to RUN_DIR/tensorboard/."""

    writer = None

    def __init__(self, image_every: int = 1, n: int = GRID_IMAGES):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise VaelabError("train.tensorboard=true needs the tensorboard package: pip install tensorboard "
                              "(or pip install 'vaelab[tensorboard]')") from None
        self._writer_class = SummaryWriter
        self.image_every, self.n = max(1, image_every), n
        self.writer = None

    def on_train_start(self, trainer) -> None:
        # on resume, events logged after the checkpoint's epoch are dropped, not duplicated
        purge = trainer.epoch + 1 if trainer.resume else None
        self.writer = self._writer_class(log_dir=str(trainer.out / TENSORBOARD_DIR), purge_step=purge)

    def on_epoch_end(self, trainer, row: dict) -> None:
        from ..imagegrid import make_grid

        step = trainer.epoch
        for key, value in row.items():
            if key == "epoch":
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(scalar_tag(key), value, step)
            elif key == "kl_per_dim" and isinstance(value, list):
                for i, kl in enumerate(value):
                    self.writer.add_scalar(f"kl_per_dim/z{i:03d}", kl, step)
        if _due(step, self.image_every, trainer.config.train.epochs):
            grid = make_grid(decode_images(trainer.model, trainer.data.transform, fixed_codes(trainer.model, self.n)),
                             nrow=int(math.ceil(math.sqrt(self.n))))
            self.writer.add_image("samples/fixed_noise", grid, step, dataformats="HW" if grid.ndim == 2 else "HWC")
        self.writer.flush()

    def on_train_end(self, trainer) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __del__(self):  # an interrupted run still leaves complete event files
        self.close()


# -- MLflow ----------------------------------------------------------------------------------

class MlflowLogger:
    """The config, every epoch's metrics row, and at the end the run's files and figures
    (prior samples, reconstructions, the progress grids) into the run's MLflow run
    (:mod:`vaelab.tracking`); a resumed run goes on logging into the same MLflow run."""

    RUN_FILES = (rundir.CONFIG, rundir.MODEL_JSON, rundir.METRICS, rundir.LOG)

    def __init__(self):
        tracking.client()  # a missing mlflow package is one clear error before any training
        self.client = self.run_id = None

    def on_train_start(self, trainer) -> None:
        self.client, self.run_id, created = tracking.open_run(trainer.out, trainer.config)
        if created:
            return
        self.client.update_run(self.run_id, status="RUNNING")
        # MLflow params cannot change: keys new to the config become params, and what a
        # resume's --set changed is kept as tags resumed.KEY
        logged = self.client.get_run(self.run_id).data.params
        params = tracking.config_params(trainer.config)
        tracking.log_params(self.client, self.run_id, {k: v for k, v in params.items() if k not in logged})
        for key, value in params.items():
            if logged.get(key, value) != value:
                self.client.set_tag(self.run_id, f"resumed.{key}", value)

    def on_epoch_end(self, trainer, row: dict) -> None:
        tracking.log_metrics(self.client, self.run_id, tracking.numeric_metrics(row), trainer.epoch)

    def on_train_end(self, trainer) -> None:
        import tempfile

        from ..imagegrid import paired_rows, save_grid

        for name in self.RUN_FILES:
            if (trainer.out / name).is_file():
                self.client.log_artifact(self.run_id, str(trainer.out / name), artifact_path="run")
        model, transform = trainer.model, trainer.data.transform
        model.eval()
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            samples, recon = Path(tmp) / "samples.png", Path(tmp) / "reconstructions.png"
            save_grid(decode_images(model, transform, fixed_codes(model)), samples,
                      nrow=int(math.ceil(math.sqrt(GRID_IMAGES))))
            device = next(model.parameters()).device
            x = transform.fixed(monitor_images(trainer)[:10].to(device))
            generator = torch.Generator(device=device).manual_seed(NOISE_SEED)
            grid, width = paired_rows(transform.to_images(x).cpu(),
                                      transform.to_images(model.reconstruct(x, False, generator)).cpu())
            save_grid(grid, recon, nrow=width)
            for path in (samples, recon):
                self.client.log_artifact(self.run_id, str(path), artifact_path=tracking.FIGURES)
        progress = trainer.out / PROGRESS_DIR
        if progress.is_dir():
            for path in sorted(progress.glob("*.png")) + sorted(progress.glob("*.gif")):
                self.client.log_artifact(self.run_id, str(path), artifact_path=f"{tracking.FIGURES}/progress")
        self.client.set_terminated(self.run_id, "FINISHED")


# -- collapse monitor ------------------------------------------------------------------------

class CollapseMonitor:
    """Warn in the log when the decoder's output stops depending on z (samples independent
    of z), once when it starts and once when it ends; the KL and active-unit checks are the
    trainer's own per-epoch warning. Neither judges the warm-up (diagnostics.collapse_warmup):
    right after the first epoch a decoder has not yet started to use z."""

    def __init__(self):
        self.collapsed = False

    def on_epoch_end(self, trainer, row: dict) -> None:
        from ..diagnostics import Z_SENSITIVITY_THRESHOLD, collapse_warmup, decoder_z_sensitivity

        if collapse_warmup(trainer.epoch, row.get("beta"), trainer.config.train):
            return
        ratio = decoder_z_sensitivity(trainer.model, trainer.data.transform, monitor_images(trainer))
        collapsed = math.isfinite(ratio) and ratio < Z_SENSITIVITY_THRESHOLD
        if collapsed and not self.collapsed:
            trainer.log(f"WARNING: samples independent of z at epoch {trainer.epoch}: decoding different "
                        f"prior draws varies the image by {100 * ratio:.2f}% of the data's pixel variance")
        elif self.collapsed and not collapsed:
            trainer.log(f"samples depend on z again at epoch {trainer.epoch} ({100 * ratio:.1f}% of the "
                        f"data's pixel variance)")
        self.collapsed = collapsed


def training_callbacks(config) -> list:
    """The factory the trainer calls: what ``config.train`` asks for, plus the collapse check."""
    t = config.train
    callbacks: list = [CollapseMonitor()]
    if t.sample_every:
        callbacks.append(ProgressGrids(t.sample_every))
    if t.stats_every_steps:
        callbacks.append(StepStats(t.stats_every_steps))
    if t.tensorboard:
        callbacks.append(TensorBoardLogger(image_every=t.sample_every or 1))
    if t.mlflow:
        callbacks.append(MlflowLogger())
    return callbacks
