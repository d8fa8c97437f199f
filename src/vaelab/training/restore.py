"""A checkpoint checked against the trainer that will resume from it, before anything is loaded.

The checksum only says the file is the one written; a file re-written with a valid
checksum (by hand, by another run, by another vaelab) can still hold moments of the wrong
shape (the fused Adam kernel then reads out of bounds: a segfault), NaN weights, another
run's state, or settings of the wrong type that fail epochs later. Every part is checked
here against what this trainer holds, and a mismatch is one VaelabError.
"""

from __future__ import annotations

import torch

from ..errors import VaelabError
from ..rundir import checkpoint as ckpt
from ..rundir import validate
from .schedules import _FROM_CONFIG


def checked_state(trainer, tensors: dict, meta: dict, where: str, position: tuple[int, int] | None) -> dict:
    """What Trainer.load_state needs, checked: model weights, optimizer state, RNG states,
    schedules and (mid-epoch) the epoch's order and sums. ``position`` is (epochs, step) from
    the checkpoint's name, which its metadata must agree with."""
    fix = "the checkpoint was not written by this run; resume from another checkpoint, or retrain"
    ckpt.check_run_id(where, meta, trainer.run_id)
    ckpt.check_model_state(trainer.model.state_dict(), ckpt.model_state(tensors), where)
    optimizer = ckpt.optimizer_state(trainer.optimizer, tensors, meta.get("optimizer"), where)

    epoch = meta.get("epoch")
    if not validate.is_int(epoch, 0) or (position is not None and epoch != position[0]):
        raise VaelabError(f"{where}: its epoch {epoch!r:.40} is not the one its name says: {fix}")
    for key in ("skipped_steps", "nan_events"):
        if not validate.is_int(meta.get(key, 0), 0):
            raise VaelabError(f"{where}: {key} is {meta.get(key)!r:.40}, not a count: {fix}")
    if not validate.is_number(meta.get("best_val"), finite=False):
        raise VaelabError(f"{where}: best_val is {meta.get('best_val')!r:.40}, not a number: {fix}")
    validate.check_like(meta.get("stopper"), trainer.stopper.state(), f"{where}: stopper")
    kl = meta.get("kl_schedule")
    if not (isinstance(kl, dict) and "best_recon" in kl and set(kl) <= {"start", "best_recon", "annealing", "weight", "cap"}
            and all(v is None or validate.is_number(v, finite=False) for v in kl.values())
            and (kl.get("cap") is None or (validate.is_number(kl["cap"]) and kl["cap"] > 0))):
        raise VaelabError(f"{where}: its KL schedule state is not vaelab's ({kl!r:.60}): {fix}")
    scheduler = meta.get("scheduler")
    if trainer.scheduler is not None and scheduler is not None:
        own = trainer.scheduler.state_dict()
        if not isinstance(scheduler, dict) or not set(scheduler) - set(_FROM_CONFIG) <= set(own):
            raise VaelabError(f"{where}: its lr schedule state is not torch's ({scheduler!r:.60}): {fix}")
        for key in set(scheduler) - set(_FROM_CONFIG):
            validate.check_like(scheduler[key], own[key], f"{where}: scheduler.{key}")
        if scheduler.get("last_epoch") != epoch:
            raise VaelabError(f"{where}: its lr schedule stands at epoch {scheduler.get('last_epoch')!r:.20}, the "
                              f"checkpoint at {epoch}: {fix}")

    _check_rng(tensors, "rng.global", torch.get_rng_state(), where)
    _check_rng(tensors, "rng.data", trainer.data_gen.get_state(), where)
    if trainer.device.type == "cuda" and "rng.cuda" in tensors:
        _check_rng(tensors, "rng.cuda", torch.cuda.get_rng_state(trainer.device), where)

    partial = meta.get("partial")
    step = position[1] if position is not None else None
    if partial is None:
        if step:
            raise VaelabError(f"{where} is named as written mid-epoch but holds no epoch state: {fix}")
    else:
        _check_partial(trainer, tensors, partial, where, step)
    return {"optimizer": optimizer, "epoch": epoch}


def _check_rng(tensors: dict, name: str, own: torch.Tensor, where: str) -> None:
    t = tensors.get(name)
    if t is None or t.dtype != own.dtype or t.shape != own.shape:
        raise VaelabError(f"{where}: random generator state {name} is "
                          f"{'missing' if t is None else f'{t.dtype} {tuple(t.shape)}'}, not {own.dtype} "
                          f"{tuple(own.shape)}: the checkpoint is damaged or from another machine's generator")


def _check_partial(trainer, tensors: dict, partial, where: str, step: int | None) -> None:
    """A mid-epoch checkpoint: the epoch's permutation, the step reached, the sums so far."""
    fix = "the checkpoint is damaged; resume from another one, or retrain"
    training = trainer.config.train
    per_step = training.batch_size + (training.labelled_batch if trainer.labels is not None else 0)
    if not (isinstance(partial, dict) and set(partial) == {"step", "seen", "grad_norm_max"}
            and validate.is_int(partial["step"], 0, trainer.steps_per_epoch - 1)
            and (step is None or partial["step"] == step)
            and validate.is_int(partial["seen"], 0, partial["step"] * per_step)
            and validate.is_number(partial["grad_norm_max"]) and partial["grad_norm_max"] >= 0):
        raise VaelabError(f"{where}: its mid-epoch state {partial!r:.80} does not fit this run: {fix}")
    order, sums = tensors.get("epoch.order"), tensors.get("epoch.sums")
    pool = len(trainer.train_images) if trainer.labels is None else len(trainer.labels.unlabelled)
    if order is None or order.dtype != torch.int64 or order.shape != (pool,) \
            or not torch.equal(order.sort().values, torch.arange(pool)):
        raise VaelabError(f"{where}: its epoch order is not a permutation of the {pool} training images: {fix}")
    # loss, reconstruction and KL summed over the images so far: finite, and far below 1e30
    if sums is None or sums.dtype != torch.float64 or sums.shape != (3,) or not validate.bounded(sums):
        raise VaelabError(f"{where}: its epoch sums are not 3 float64 numbers of at most "
                          f"{validate.MAX_WEIGHT:g}: {fix}")
