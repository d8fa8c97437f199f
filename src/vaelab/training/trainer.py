"""The training loop: batches from uint8 images, the objective, schedules, validation,
checkpoints that allow an exact resume, early stopping and the NaN guard.

Kept lean on the hot path: data stay uint8 on the device (a memory-mapped store, on the
host: each batch is gathered and moved) and are converted per batch; the
loop adds no host sync beyond the loss check that the NaN guard needs, and nothing per
step that is not the model's own arithmetic.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
import uuid
from pathlib import Path

import torch

from .. import distributed
from .. import rundir
from ..codes import check_codes_shape
from ..config import Config
from ..data.store import MappedImages
from ..diagnostics import collapse_warning, latent_spread, psnr
from ..devices import resolve_device
from ..errors import VaelabError
from ..evaluate import ElboPass
from ..families import build_model
from ..objective import noise_shape, training_loss
from ..prepared_data import PreparedData, prepare_data
from ..rundir import checkpoint as ckpt
from ..rundir import validate
from ..rundir.load import check_description, m1_codes, model_shapes, read_description
from ..version import __version__
from .nan_guard import NanGuard, RolledBack
from .replace import Replacement, is_dead_end, restore_interrupted
from .restore import checked_state
from .schedules import EarlyStopping, KLSchedule, load_lr_state, make_lr_scheduler

VAL_NOISE_SEED = 1234  # validation uses its own generator: it never moves training's RNG


class Stopped(KeyboardInterrupt):
    """Training stopped on a signal after saving a checkpoint; ``signum`` says which
    (the command exits with 128 + signum, as a shell expects: 130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def make_optimizer(model: torch.nn.Module, training, device: torch.device) -> torch.optim.Optimizer:
    # The fused Adam kernel does the whole update in one pass per tensor: fewer Python
    # steps and memory sweeps than the default foreach path, same arithmetic.
    return torch.optim.Adam(model.parameters(), lr=training.lr, betas=tuple(training.betas),
                            weight_decay=training.weight_decay, fused=device.type in ("cpu", "cuda"))


def compiled_loss():
    """training_loss through torch.compile: networks, likelihood and KL in one graph, so the
    elementwise work (activations, the loss, their backward) fuses into a few passes. The
    noise is drawn outside, from the same generator and in the same order as model.loss
    would, so a compiled run follows the eager one (inductor would draw its own; dropout's
    masks are still inductor's). The KL weight goes in as a tensor: a float is baked into the
    graph and would recompile it at every step of an annealing schedule. One graph per batch
    shape (the full batch and the epoch's last), no dynamic shapes. torch keeps the graphs of
    every model one process compiles, up to its recompile limit (8): past about four runs in
    one process, later ones train eagerly (torch warns)."""
    compiled = torch.compile(training_loss, dynamic=False)

    def loss(model, x, beta, train, **kwargs):
        noise = torch.randn(noise_shape(model, train, x.shape[0]), device=x.device)
        beta = torch.tensor(beta, dtype=torch.float32, device=x.device)
        return compiled(model, x, beta, train, noise=noise, **kwargs)
    return loss


class Trainer:
    def __init__(self, config: Config, out: str | Path, resume: bool = False,
                 progress: bool = True, log=None, callbacks: list | None = None):
        self.config = config
        # objects with optional on_train_start(trainer), on_epoch_end(trainer, row),
        # on_train_end(trainer): figures, TensorBoard and the like hook in here
        self.callbacks = list(callbacks or [])
        # the training step calls back only when some callback listens
        self._step_listeners = any(hasattr(c, "on_step_end") for c in self.callbacks)
        self._size_logged = False  # the checkpoint size is logged once a run
        self.stop_signal = signal.SIGINT  # the signal that stopped training, if one did
        self.out = Path(out)
        self.resume = resume
        self.run_id: str | None = None  # set when the run directory is opened (_run_identity)
        self.description: dict | None = None  # a resumed run's model.json
        self.dist = distributed.context()  # None unless several processes train together
        self.is_main = self.dist is None or self.dist.is_main  # only rank 0 writes the run directory
        self.progress = progress and self.is_main
        self._log_stream = log if log is not None else sys.stderr
        self.stop_requested: str | None = None
        self._config_changed = False  # a resume changed settings: saved with its first checkpoint

    # -- logging -------------------------------------------------------------------------
    def log_file_only(self, message: str) -> None:
        if self.is_main:
            with open(self.out / rundir.LOG, "a") as f:
                f.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")

    def log(self, message: str) -> None:
        """To train.log, and to the terminal when progress is shown (warnings always)."""
        self.log_file_only(message)
        if self.is_main and (self.progress or message.startswith("WARNING")):
            print(f"[{time.strftime('%H:%M:%S')}] {message}", file=self._log_stream, flush=True)

    # -- setup ---------------------------------------------------------------------------
    def _setup(self, transform=None) -> None:
        cfg, training = self.config, self.config.train
        self.device = resolve_device(training.device)
        if self.dist is not None and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if training.threads:
            torch.set_num_threads(training.threads)
        if self.device.type == "cpu":
            # Adam's running averages of weights whose gradient stays zero (dead ReLUs,
            # border pixels) decay into denormal floats, which are 10-100x slower on x86.
            torch.set_flush_denormal(True)
        torch.manual_seed(training.seed)
        if transform is None and cfg.data.transform == "m1":  # M1+M2: the codes of a finished run
            transform = m1_codes(cfg.data.m1_run, str(self.device), cfg.data.m1_units)
        self.data: PreparedData = prepare_data(cfg.data, seed=training.seed, transform=transform)
        if cfg.data.transform == "m1":
            check_codes_shape(self.data.transform, self.data.image_shape)
        if hasattr(self.data.transform, "to"):
            self.data.transform.to(self.device)
        self.train_images = _resident(self.data.train, self.device, self.log)
        self.val_images = _resident(self.data.val, self.device, self.log)
        if self.description is not None:  # resuming: the run's own model, before any memory is taken
            model_shapes(self.out, cfg, self.description, self.data.event_shape)
        self.model = build_model(cfg.model, self.data.event_shape).to(self.device)
        self.channels_last = training.channels_last == "on" or (
            training.channels_last == "auto" and bool({"conv", "resnet"} & {cfg.model.encoder, cfg.model.decoder}))
        if self.channels_last:  # NHWC: the layout oneDNN and cuDNN convolutions prefer
            self.model.to(memory_format=torch.channels_last)
        self._loss = training_loss
        if training.compile:
            self.data.transform.compile()
            if self.dist:  # DDP calls the model itself: its networks compile in place (same state_dict keys)
                for part in self.model.children():
                    part.compile()
            else:
                self._loss = compiled_loss()
        self.parallel = distributed.DataParallel(self.model, self.dist, self.device) if self.dist else None
        self.optimizer = make_optimizer(self.model, training, self.device)
        # every step on CPU; on CUDA every 50, unless the optimizer cannot skip a step itself
        check_every = training.nan_check_every or (50 if self.device.type == "cuda" else 1)
        self.guard = NanGuard(self, check_every if self.optimizer.defaults.get("fused") else 1)
        self._autocast = ((lambda: torch.autocast(self.device.type, dtype=torch.bfloat16))
                          if training.autocast == "bf16" else contextlib.nullcontext)
        self.scheduler = make_lr_scheduler(self.optimizer, training)
        self.kl_schedule = KLSchedule(training)
        self.stopper = EarlyStopping(training.patience, training.min_delta)
        # data order and dynamic binarization draw from their own generator (saved with
        # each checkpoint); reparameterization noise and dropout use the global one
        self.data_gen = torch.Generator(device=self.device).manual_seed(training.seed)
        self.epoch = 0  # completed epochs
        self.best_val = -math.inf
        self.skipped_steps = 0
        self.nan_events = 0
        self.good_state = None  # in-memory copy for the rollback policy
        self.rollbacks = 0  # consecutive rollbacks without a completed epoch
        self._partial = None  # where an interrupted epoch stands (order, step, partial sums)
        self.labels = SemiSupervised(self.data, training, self.device) if getattr(self.model, "uses_labels", False) else None
        # an epoch passes once over the images trained on without labels (all, for other models)
        n = len(self.train_images) if self.labels is None else len(self.labels.unlabelled)
        # a last batch of one is dropped (batch norm); with several processes, every rank needs one image
        last = 2 if self.dist is None else max(2, self.dist.world)
        self.steps_per_epoch = n // training.batch_size + (1 if n % training.batch_size >= last else 0)
        if self.steps_per_epoch == 0 and training.epochs > 0 and self.labels is not None:
            raise VaelabError(f"data.labelled={len(self.labels.labelled)} leaves {n} unlabelled training image(s): too "
                              f"few for one step; lower data.labelled or raise data.limit")
        if self.steps_per_epoch == 0 and training.epochs > 0:
            raise VaelabError(f"only {n} training image(s) after holding out validation: too few for one step "
                              f"(at least {last} are needed); raise data.limit or lower data.val_fraction")

    # -- checkpoint state ----------------------------------------------------------------
    def _state(self, partial: dict | None = None) -> tuple[dict, dict]:
        tensors = ckpt.model_tensors(self.model)
        opt_tensors, opt_meta = ckpt.flatten_optimizer(self.optimizer.state_dict())
        tensors.update(opt_tensors)
        tensors["rng.global"] = torch.get_rng_state()
        tensors["rng.data"] = self.data_gen.get_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        tensors.update(self.data.transform.state())
        meta = {
            "epoch": self.epoch, "best_val": self.best_val, "optimizer": opt_meta,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "kl_schedule": self.kl_schedule.state(), "stopper": self.stopper.state(),
            "skipped_steps": self.skipped_steps, "nan_events": self.nan_events,
            "vaelab": __version__, "torch": torch.__version__, "run_id": self.run_id,
        }
        if partial is not None:  # written mid-epoch: the epoch's order and partial sums
            tensors["epoch.order"], tensors["epoch.sums"] = partial["order"], partial["sums"]
            meta["partial"] = {k: partial[k] for k in ("step", "seen", "grad_norm_max")}
        return tensors, meta

    def _snapshot(self) -> tuple[dict, dict]:
        """A copy of the state that later steps cannot change (state_dict shares storage)."""
        tensors, meta = self._state()
        return {k: v.detach().clone() for k, v in tensors.items()}, json.loads(json.dumps(meta))

    def load_state(self, tensors: dict, meta: dict, where: str = "the last good state",
                   position: tuple[int, int] | None = None) -> None:
        """Restore a checkpoint; every part is checked first (restore.checked_state), so a
        file that does not fit this run changes nothing and is one VaelabError."""
        checked = checked_state(self, tensors, meta, where, position)
        self.model.load_state_dict(ckpt.model_state(tensors))
        self.optimizer.load_state_dict(checked["optimizer"])
        _match_state_layout(self.optimizer)
        if self.scheduler and meta.get("scheduler"):
            load_lr_state(self.scheduler, meta["scheduler"])
        torch.set_rng_state(tensors["rng.global"])
        self.data_gen.set_state(tensors["rng.data"].to("cpu") if self.device.type == "cpu" else tensors["rng.data"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.kl_schedule.load_state(meta["kl_schedule"], meta["epoch"])
        self.stopper.load_state(meta["stopper"])
        self.epoch = meta["epoch"]
        self.best_val = meta["best_val"]
        self.skipped_steps = meta.get("skipped_steps", 0)
        self.nan_events = meta.get("nan_events", 0)
        partial = meta.get("partial")
        self._partial = None if partial is None else dict(
            partial, order=tensors["epoch.order"].to(self.device), sums=tensors["epoch.sums"].to(self.device))

    def save_checkpoint(self, best: bool = False, partial: dict | None = None) -> Path | None:
        if not self.is_main:
            return None
        if self._config_changed:
            self.config.save(self.out / rundir.CONFIG)
            self._config_changed = False
        folder = self.out / rundir.CHECKPOINTS
        folder.mkdir(exist_ok=True)
        tensors, meta = self._state(partial)
        path = folder / rundir.checkpoint_name(self.epoch, partial["step"] if partial else 0)
        ckpt.save_tensors(path, tensors, meta)
        if not self._size_logged:  # what each checkpoint costs on disk
            self._size_logged = True
            keep = self.config.train.keep_checkpoints
            self.log_file_only(f"checkpoints are {path.stat().st_size / 2**20:.1f} MiB each (weights, optimizer "
                                f"state, RNG); the newest {keep} and best.safetensors are kept "
                                f"(train.keep_checkpoints)")
        for old in rundir.checkpoint_paths(self.out)[self.config.train.keep_checkpoints:]:
            old.unlink(missing_ok=True)
        if best:
            ckpt.save_tensors(folder / "best.safetensors", tensors, meta)
        return path

    def _restore_latest(self) -> None:
        """Load the newest checkpoint that verifies; a damaged newer one is set aside, loudly.

        Then metrics.jsonl is cut back to the epochs that checkpoint covers, so each later
        epoch gets exactly one row, and temporary files of a killed writer are removed.
        Only rank 0 (the lock holder) changes files; other ranks load the same checkpoint.
        """
        if self.is_main:
            rundir.remove_stale_temp_files(self.out)
        for path in rundir.checkpoint_paths(self.out):
            try:
                tensors, meta = ckpt.load_tensors(path)
            except VaelabError as exc:
                if self.is_main:
                    self.log(f"WARNING: skipping damaged checkpoint: {exc}; "
                             f"renamed to {rundir.set_aside(path).name}")
                continue
            try:
                self.load_state(tensors, meta, str(path), rundir.checkpoint_position(path))
            except (RuntimeError, KeyError, ValueError) as exc:
                detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])[:300] or str(exc)
                raise VaelabError(f"{path} does not match this run's config ({detail}); "
                                  f"resume with the config the run was started with") from None
            dropped = rundir.truncate_metrics(self.out, self.epoch) if self.is_main else 0
            where = f", step {self._partial['step']} of epoch {self.epoch + 1}" if self._partial else ""
            self.log(f"resumed from {path.name} (epoch {self.epoch}{where})"
                     + (f"; dropped {dropped} metrics rows written after it" if dropped else ""))
            return
        raise VaelabError(f"{self.out} has no usable checkpoint to resume from")

    def _apply_resume_overrides(self) -> None:
        """A resumed run takes the settings given now (more epochs, a new lr) and records them.

        The schedules already follow the current config: the lr scheduler's length and step
        come from it (schedules.load_lr_state), the KL schedules are set in epochs.
        """
        saved = Config.load(self.out / rundir.CONFIG)
        training = self.config.train
        if training.lr_schedule == "cosine" and saved.train.epochs != training.epochs:
            self.log(f"cosine learning-rate schedule now spans {training.epochs} epochs (was {saved.train.epochs}): "
                     f"lr {self.optimizer.param_groups[0]['lr']:.3g} after epoch {self.epoch}")
        if saved.train.lr != self.config.train.lr:
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.train.lr
            self.log(f"learning rate set to {self.config.train.lr:g} (was {saved.train.lr:g})")
        # recorded with the first checkpoint of the resumed run: a resume that fails at once
        # (a setting that diverges) leaves the run as it was
        self._config_changed = saved.to_dict() != self.config.to_dict()

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> Path:
        # the trainer changes two process-wide torch settings; put them back afterwards
        threads = torch.get_num_threads()
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)
            torch.set_flush_denormal(False)

    def _run(self) -> Path:
        cfg = self.config
        created = not self.out.exists() and self.is_main
        self.out.mkdir(parents=True, exist_ok=True)
        with rundir.RunLock(self.out) if self.is_main else contextlib.nullcontext():
            transform = None
            try:
                self.run_id = self._run_identity()
                if self.resume and cfg.data.transform == "pca":
                    transform = _saved_transform(self.out, self.run_id)
                self._setup(transform)
            except BaseException:
                if created:  # bad data or settings: leave no half-made run directory behind
                    import shutil

                    shutil.rmtree(self.out, ignore_errors=True)
                raise
            if self.resume:
                self._restore_latest()
                self._apply_resume_overrides()
            elif self.is_main:
                cfg.save(self.out / rundir.CONFIG)
                (self.out / rundir.METRICS).write_text("")
                if self.labels is not None:  # which images carried labels, as rows of the training split
                    rows = self.data.labelled_rows.tolist()
                    labels = self.data.train_labels[self.data.labelled].tolist()
                    record = {"split": cfg.data.train_split, "rows": rows, "labels": labels}
                    rundir.atomic_write_bytes(self.out / rundir.LABELLED, (json.dumps(record) + "\n").encode())
                self.log(f"vaelab {__version__}: training on {self.device}, "
                         f"{len(self.train_images)} train / {len(self.val_images)} val images of "
                         f"{cfg.data.name}, event shape {self.data.event_shape}, "
                         f"{sum(p.numel() for p in self.model.parameters()):,} parameters")
                if cfg.data.transform == "pca":
                    quality = self.data.transform.quality(self.data.val if len(self.data.val) else self.data.train)
                    self.log("PCA: " + ", ".join(f"{k}={v:.4g}" for k, v in quality.items()))
                model = cfg.model
                if (cfg.data.transform == "scale" and not cfg.data.dequantize and model.likelihood == "gaussian"
                        and model.variance != "fixed"):
                    self.log("WARNING: a learned variance on 8-bit pixels at their grid values can shrink without "
                             "bound where pixels are constant (the density grows, the code length does not); "
                             "train with data.dequantize=true")
            if cfg.train.nan_policy == "rollback":
                self.good_state = self._snapshot()
            self._write_model_description()
            self._callback("on_train_start")
            previous = {signal.SIGINT: None, signal.SIGTERM: None}
            for sig in previous:
                try:
                    previous[sig] = signal.signal(sig, self._on_signal)
                except ValueError:  # not the main thread: no handlers
                    previous.pop(sig)
            try:
                self._loop()
            finally:
                for sig, handler in previous.items():
                    if handler is not None:
                        signal.signal(sig, handler)
            self._save_final()
            self._callback("on_train_end")
        return self.out

    def _run_identity(self) -> str:
        """A new run's id (a uuid4), or a resumed run's own from model.json, which its
        checkpoints must carry. The files the trainer appends to must be files (a directory
        or FIFO there would raise or block at the first line)."""
        for name in (rundir.LOG, rundir.METRICS):
            validate.regular_file(self.out / name)
        if self.resume and validate.regular_file(self.out / rundir.MODEL_JSON):
            self.description = read_description(self.out)
            check_description(self.out, self.config, self.description)
            run_id = self.description.get("run_id")
            if run_id:  # runs from before run ids have none: their checkpoints are not checked
                return run_id
        return uuid.uuid4().hex

    def _callback(self, event: str, *args) -> None:
        if not self.is_main:
            return
        for callback in self.callbacks:
            handler = getattr(callback, event, None)
            if handler is not None:
                handler(self, *args)

    def _on_signal(self, signum, frame) -> None:
        self.stop_requested = signal.Signals(signum).name
        self.stop_signal = signum

    def _loop(self) -> None:
        training = self.config.train
        while self.epoch < training.epochs:
            start = time.perf_counter()
            try:
                row = self._train_epoch()
            except RolledBack:  # the last good state is back, at a lower lr: redo the epoch
                continue
            if row is None:  # interrupted mid-epoch: save where the epoch stands, then stop
                path = self.save_checkpoint(partial=self._partial)
                self.log(f"{self.stop_requested}: stopped at step {self._partial['step']} of epoch "
                         f"{self.epoch + 1}, checkpoint {path.name} saved; "
                         f"resume with `vaelab train --resume {self.out}`")
                raise Stopped(self.stop_signal)
            self.rollbacks = 0
            train_seconds = time.perf_counter() - start
            row.update(self._validate())
            row = distributed.broadcast(row, self.dist)  # rank 0's numbers: one decision on every rank
            self.epoch += 1
            # the annealing trigger reads reconstruction quality in image space, free of a likelihood's
            # constant (ae-then-anneal needs validation images: Config.validate)
            self.kl_schedule.end_epoch(row.get("val_recon_mse", math.nan), self.epoch,
                                       row.get("val_mean_image_mse", math.nan), self._nats_per_squared_error())
            monitored = -row["val_elbo"] if training.early_stopping != "train" else row["train_loss"]
            if self.scheduler is not None:
                if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step(monitored)
                else:
                    self.scheduler.step()
            row.update(epoch=self.epoch, images_per_s=row.pop("_images") / train_seconds,
                       seconds=time.perf_counter() - start)
            stop = training.early_stopping != "none" and self.stopper.update(monitored)
            is_best = len(self.val_images) > 0 and row["val_elbo"] > self.best_val
            if is_best:
                self.best_val = row["val_elbo"]
            if self.is_main:
                with open(self.out / rundir.METRICS, "a") as f:
                    f.write(json.dumps(_finite_or_null(row)) + "\n")
            self._log_epoch(row)
            self._callback("on_epoch_end", row)
            if (self.epoch % training.checkpoint_every == 0 or stop or self.epoch == training.epochs or is_best
                    or self.stop_requested):
                self.save_checkpoint(best=is_best)
            if training.nan_policy == "rollback":
                self.good_state = self._snapshot()
            if stop:
                self.log(f"early stopping: no improvement of the monitored "
                         f"{'training loss' if training.early_stopping == 'train' else 'validation loss'} "
                         f"for {training.patience} epochs")
                break
            if self.stop_requested:
                self.log(f"{self.stop_requested}: stopped after epoch {self.epoch}, checkpoint saved; "
                         f"resume with `vaelab train --resume {self.out}`")
                raise Stopped(self.stop_signal)

    def _train_epoch(self) -> dict | None:
        """One epoch (or the rest of an interrupted one): batch, step, guard, sums. None when a
        signal stopped it; where it stood is then in self._partial."""
        training, opt, guard = self.config.train, self.optimizer, self.guard
        self.model.train()
        partial, self._partial = self._partial, None
        order, first, sums, seen, grad_norm_max = self._epoch_start(partial)
        bar = self._progress_bar()
        params = list(self.model.parameters())
        # host-side data (a store, or images the device had no room for) is gathered on the
        # host: its indices go there once an epoch, not once a step (a sync on CUDA)
        batch_order = order if isinstance(self.train_images, torch.Tensor) else order.cpu()
        guard.start_epoch(self.device)
        x = beta = None
        for step in range(first, self.steps_per_epoch):
            stopping = bool(self.stop_requested) and self.dist is None  # several processes stop together, after the epoch
            if guard.due(step, first, stopping):
                seen, grad_norm_max = guard.settle(seen, grad_norm_max, x, beta)
            if stopping:
                self._partial = {"order": order, "step": step, "sums": sums, "seen": seen,
                                 "grad_norm_max": grad_norm_max}
                if bar:
                    bar.close()
                return None
            x, beta, labels = self._batch(batch_order, step)
            with self._autocast():
                weights = self.labels.weights if self.labels else None
                if self.parallel is not None:  # this rank's shard of the global batch, through DDP
                    x, out, objective = self.parallel.loss(x, beta, training, labels=labels, weights=weights)
                else:
                    out = self._loss(self.model, x, beta, training, labels=labels, weights=weights)
                    objective = out.loss
            opt.zero_grad(set_to_none=True)
            if not guard.loss_ok(out, x, beta, self.parallel is not None):
                continue
            objective.backward()
            if training.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(params, training.grad_clip)
            else:
                norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            ok = guard.gradient_ok(out, norm, x, beta, opt)
            if ok is False:
                continue
            opt.step()
            seen += x.shape[0]
            step_sums = torch.stack([out.loss.detach(), out.recon, out.kl]).double() * x.shape[0]
            if guard.deferred:  # no host sync: a skipped step adds nothing
                sums += torch.where(ok, step_sums, 0.0)
            else:
                sums += step_sums
                grad_norm_max = max(grad_norm_max, float(norm))
            if self._step_listeners:
                self._callback("on_step_end", self.epoch * self.steps_per_epoch + step + 1, beta)
            if bar is not None:
                bar.update(1)
                if step % 20 == 0:
                    loss, recon, kl = (sums / max(seen, 1)).tolist()
                    bar.set_postfix(loss=f"{loss:.2f}", recon=f"{recon:.2f}", kl=f"{kl:.2f}", refresh=False)
        if bar is not None:
            bar.close()
        if guard.deferred and self.steps_per_epoch > first:
            seen, grad_norm_max = guard.settle(seen, grad_norm_max, x, beta)
        return self._epoch_row(sums, seen, grad_norm_max, partial)

    def _epoch_start(self, partial: dict | None):
        """(order, first step, sums, images seen, largest gradient norm) of this epoch: a fresh
        order, or where an interrupted epoch stood (the same order, sums and RNG as before)."""
        if partial is not None:
            sums, seen = partial["sums"].clone(), partial["seen"]
            if not self.is_main:  # the sums so far count once, on rank 0
                sums.zero_()
                seen = 0
            return partial["order"], partial["step"], sums, seen, partial["grad_norm_max"]
        pool = len(self.train_images) if self.labels is None else len(self.labels.unlabelled)
        order = torch.randperm(pool, generator=self.data_gen, device=self.device)
        sums = torch.zeros(3, device=self.device, dtype=torch.float64)  # loss, recon, KL times images
        return order, 0, sums, 0, 0.0

    def _progress_bar(self):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}/{self.config.train.epochs}",
                    leave=False, dynamic_ncols=True, mininterval=0.5, file=self._log_stream,
                    disable=None)  # no bar when the output is not a terminal

    def _batch(self, batch_order: torch.Tensor, step: int) -> tuple[torch.Tensor, float, torch.Tensor | None]:
        """The model's input for this step (drawn through the transform), the KL weight, and
        for a semi-supervised model the batch's labels (-1 where unlabelled)."""
        size = self.config.train.batch_size
        idx = batch_order[step * size:(step + 1) * size]
        labels = None
        if self.labels is not None:  # the unlabelled batch, then the labelled images of this step
            idx, labels = self.labels.batch(self.labels.unlabelled[idx.to(self.device)], self.epoch, step)
            idx = idx if isinstance(self.train_images, torch.Tensor) else idx.cpu()
        images = self.train_images
        # index_select gathers whole rows, about 10x faster than images[idx] on uint8 (BENCHMARKS.md)
        rows = images.index_select(0, idx) if isinstance(images, torch.Tensor) else images[idx]
        x = self.data.transform(rows.to(self.device), generator=self.data_gen)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.kl_schedule.beta_at(self.epoch + step / self.steps_per_epoch), labels

    def _epoch_row(self, sums: torch.Tensor, seen: int, grad_norm_max: float, partial: dict | None) -> dict:
        """The epoch's training numbers, over every rank's share of it."""
        if self.dist is not None:  # every rank's share of the epoch, and whether any rank was told to stop
            total = torch.cat([sums, torch.tensor([seen, bool(self.stop_requested)], dtype=sums.dtype,
                                                  device=sums.device)])
            distributed.all_reduce_sum(total, self.dist)
            sums, seen = total[:3], int(total[3])
            if total[4] > 0 and not self.stop_requested:
                self.stop_requested = "stop requested on another rank"
        # an epoch whose every batch was skipped has no loss: NaN (null in metrics.jsonl), not 0
        loss, recon, kl = (sums / seen).tolist() if seen else [math.nan] * 3
        # images_per_s times only this process's part of a resumed epoch
        resumed = partial["seen"] if partial is not None and self.is_main else 0
        return {"train_loss": loss, "train_recon": recon, "train_kl": kl,
                "beta": self.kl_schedule.beta_at(self.epoch + 1 - 1e-9), "beta_cap": self.kl_schedule.cap,
                "lr": self.optimizer.param_groups[0]["lr"], "grad_norm_max": grad_norm_max,
                "skipped_steps": self.skipped_steps, "nan_events": self.nan_events,
                "_images": seen - resumed}

    def _nats_per_squared_error(self) -> float:
        """A fixed-variance Gaussian decoder's nats per image for a mean squared error of 1 per
        pixel, D / (2 sigma^2) (image space is model space under data.transform=scale); NaN
        for other likelihoods."""
        model = self.config.model
        if model.likelihood != "gaussian" or model.variance != "fixed":
            return math.nan
        return math.prod(self.data.event_shape) / (2 * model.sigma ** 2)

    # -- validation ------------------------------------------------------------------------
    @torch.no_grad()
    def _validate(self) -> dict:
        if len(self.val_images) == 0:
            return {"val_elbo": float("nan")}
        self.model.eval()
        gen = torch.Generator(device=self.device).manual_seed(VAL_NOISE_SEED)
        measured = ElboPass(self.model, self.data.transform, gen)
        for start in range(0, len(self.val_images), 1000):
            measured.add(self.val_images[start:start + 1000].to(self.device))
        result = measured.result()
        row = {f"val_{k}": result.pop(k) for k in ("elbo", "recon", "kl", "recon_mse", "mean_image_mse")}
        row.update(result)  # active_units, kl_per_dim
        if self.config.train.log_latent_stats:
            mean, std = measured.posteriors()
            row.update(latent_spread(mean[:256], std[:256]))
        return row

    @staticmethod
    def _psnr_text(row: dict) -> str:
        recon, mean_image = row.get("val_recon_mse"), row.get("val_mean_image_mse")
        if not recon or not mean_image:
            return ""
        return f"val recon PSNR {psnr(recon):.1f} dB (mean image {psnr(mean_image):.1f}), "

    def _log_epoch(self, row: dict) -> None:
        if len(self.val_images) == 0:  # data.val_fraction=0: say so rather than print nan
            held_out = "no validation images (data.val_fraction=0), "
        else:
            held_out = (f"val ELBO {row['val_elbo']:.3f} nats/image, {row.get('active_units', 0)} active units, "
                        f"{self._psnr_text(row)}")
        self.log(f"epoch {row['epoch']}: loss {row['train_loss']:.3f} (recon {row['train_recon']:.3f}, "
                 f"KL {row['train_kl']:.3f}, beta {row['beta']:.3g}) {held_out}{row['images_per_s']:.0f} img/s")
        warning = collapse_warning(row, self.config.train)
        if warning:
            self.log("WARNING: " + warning)

    # -- outputs -------------------------------------------------------------------------------
    def _write_model_description(self) -> None:
        if not self.is_main:
            return
        description = {
            "format": "vaelab-model-1", "vaelab": __version__, "torch": torch.__version__,
            "dataset": self.config.data.name, "transform": self.data.transform.name,
            "image_shape": list(self.data.image_shape), "event_shape": list(self.data.event_shape),
            "latent_dim": self.config.model.latent_dim, "likelihood": self.config.model.likelihood,
            "variance": self.config.model.variance, "encoder": self.config.model.encoder,
            "decoder": self.config.model.decoder, "family": self.config.model.family,
            "prior": self.config.model.prior, "flow_steps": self.config.model.flow_steps,
            "kl_method": getattr(self.model, "kl_method", "analytic"),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "weights": rundir.WEIGHTS, "run_id": self.run_id,
        }
        rundir.atomic_write_bytes(self.out / rundir.MODEL_JSON, (json.dumps(description, indent=2) + "\n").encode())

    def _save_final(self) -> None:
        if not self.is_main:
            return
        tensors = ckpt.model_tensors(self.model)
        tensors.update(self.data.transform.state())
        ckpt.save_tensors(self.out / rundir.WEIGHTS, tensors, {"epoch": self.epoch, "vaelab": __version__,
                                                           "run_id": self.run_id})
        self.log(f"done: {self.epoch} epochs; weights in {self.out / rundir.WEIGHTS}")


class SemiSupervised:
    """Which training images carry labels (data.labelled), and how they join each batch.

    Every step takes train.batch_size images from the unlabelled rest (one pass of them is
    an epoch) and train.labelled_batch from the labelled subset, in an order drawn from the
    seed and the epoch alone, so a resumed run draws the same. The loss weights make the
    batch an unbiased estimate of Kingma et al.'s objective over the training set, per image.
    """

    def __init__(self, data, training, device: torch.device):
        n = len(data.train)
        self.labelled = data.labelled.to(device)
        mask = torch.ones(n, dtype=torch.bool, device=device)
        mask[self.labelled] = False
        self.unlabelled = torch.nonzero(mask).flatten()
        self.targets = data.train_labels.to(device)
        self.seed, self.size = training.seed, training.labelled_batch
        n_l = len(self.labelled)
        # J^alpha / N = (N_u/N) mean(-U) + (N_l/N) mean(-L) + (alpha/N) mean(-log q(y|x)), alpha / N = class_weight;
        # labelled_weight counts each labelled image's bound that many times
        self.weights = (len(self.unlabelled) / n, training.labelled_weight * n_l / n, training.class_weight)

    def batch(self, unlabelled_idx: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices into train: the unlabelled ones then this step's labelled ones, labels)."""
        n_l = len(self.labelled)
        order = torch.randperm(n_l, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
        picks = order[(torch.arange(self.size) + step * self.size) % n_l].to(self.labelled.device)
        chosen = self.labelled[picks]
        labels = torch.cat([torch.full_like(unlabelled_idx, -1), self.targets[chosen]])
        return torch.cat([unlabelled_idx, chosen]), labels


def _match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each restored optimizer state tensor its parameter's memory layout.

    Checkpoints store tensors contiguous; a channels_last conv weight's Adam moments come
    back in the standard layout. The fused Adam kernel walks parameter and state as flat
    memory, so mismatched layouts would pair each weight with another one's moments.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    optimizer.state[p][key] = torch.empty_like(p).copy_(value)


def _resident(images, device: torch.device, log=None):
    """In-memory uint8 data move to the device once (a GPU holds most datasets); a
    memory-mapped store (MappedImages) stays on the host and each batch moves on its own,
    and so does in-memory data that the device has no room for (said once in the log)."""
    if not isinstance(images, torch.Tensor):
        return images
    try:
        return images.to(device)
    except torch.cuda.OutOfMemoryError:  # torch.OutOfMemoryError from torch 2.5 on
        if log is not None:
            log(f"WARNING: {images.numel() / 2**30:.2f} GiB of images do not fit in {device} memory: "
                f"they stay in host memory and each batch is copied over (slower; a smaller data.limit keeps "
                f"them on the device)")
        return MappedImages(images.numpy())


def _finite_or_null(row: dict) -> dict:
    """Strict JSON: NaN and infinities become null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def _saved_transform(run_dir: Path, run_id: str | None):
    """The PCA a run fitted, from its weights or a checkpoint: a resume goes on with it."""
    for path in [run_dir / rundir.WEIGHTS, *rundir.checkpoint_paths(run_dir)]:
        if path.exists():
            tensors, meta = ckpt.load_tensors(path)
            ckpt.check_run_id(path, meta, run_id)
            transform = ckpt.saved_transform(tensors)
            if transform is not None:
                return transform
    raise VaelabError(f"{run_dir} has no saved PCA to resume with")


def default_callbacks(config: Config) -> list:
    """The callbacks a config asks for (progress grids, TensorBoard, ...)."""
    # imported here, not at the top, so callbacks.py may import from the package without a cycle
    from .callbacks import training_callbacks

    if training_callbacks not in CALLBACK_FACTORIES:
        CALLBACK_FACTORIES.append(training_callbacks)
    callbacks = []
    for factory in CALLBACK_FACTORIES:
        callbacks.extend(factory(config))
    return callbacks


#: functions config -> list of callbacks; modules that add training-time outputs register here
CALLBACK_FACTORIES: list = []


def train(config: Config, out: str | Path, resume: bool = False, overwrite: bool = False,
          progress: bool = True, callbacks: list | None = None) -> Path:
    """Train a VAE into the run directory ``out``; returns its path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VaelabError(f"{out} is a file, not a run directory: give --out a folder (new, or with "
                          f"--overwrite an old run directory)")
    ctx = distributed.init(config.train.device)  # several processes (torchrun): join them first
    finished = False
    try:
        out = _train_as_rank(config, out, ctx, resume, overwrite, progress, callbacks)
        finished = True
        return out
    finally:
        distributed.leave(finished)


def _train_as_rank(config: Config, out: Path, ctx, resume: bool, overwrite: bool, progress: bool,
                   callbacks) -> Path:
    main = ctx is None or ctx.is_main
    if main:
        restore_interrupted(out)  # a killed --overwrite put its old run aside: back it comes
    replacement = None
    if resume:
        if not (out / rundir.CONFIG).exists():
            hint = (": it holds only what a run killed while starting leaves; start it again without --resume"
                    if out.is_dir() and is_dead_end(out) else "")
            raise VaelabError(f"cannot resume: {out} is not a vaelab run directory (no {rundir.CONFIG}){hint}")
    elif out.exists() and not is_dead_end(out):
        if not overwrite:
            raise VaelabError(f"{out} already exists and is not empty: pass --overwrite to replace it, "
                              f"--resume to continue it, or choose another --out")
        if main:  # set aside now, removed only once the new run is ready to train
            replacement = Replacement(out)
    try:
        config.validate()
        _record_data_paths(config)
        distributed.barrier(ctx)  # every rank has looked at `out` before rank 0 writes to it
        if callbacks is None:
            callbacks = default_callbacks(config)
        if replacement is not None:  # last: every other start-up hook has succeeded first
            callbacks = [*callbacks, replacement]
        try:
            return Trainer(config, out, resume=resume, progress=progress, callbacks=callbacks).run()
        except OSError as exc:  # disk full, read-only folder: one clear line, not a traceback
            if exc.errno not in rundir.WRITE_ERRNOS:
                raise
            raise rundir.write_error(Path(exc.filename or out), exc) from None
    except BaseException:
        if replacement is not None:  # failed (or stopped) before training: the old run is kept
            replacement.put_back()
        raise


def _record_data_paths(config: Config) -> None:
    """Record where the data were, absolute ($VAELAB_DATA or the cache when not given), so later
    commands find them from any folder and without --data-dir."""
    from ..data.dataset import default_data_dir

    config.data.data_dir = str(Path(config.data.data_dir or default_data_dir()).expanduser().resolve())
