"""The training objective a config asks for, chosen in one place for one process and for
data-parallel training alike: the ELBO with a KL weight and free bits (an autoencoder at
beta = 0), or the IWAE bound with k samples."""

from __future__ import annotations

import torch


def training_loss(model, x: torch.Tensor, beta: float, train, noise: torch.Tensor | None = None,
                  labels: torch.Tensor | None = None, weights: tuple[float, float, float] | None = None,
                  counts: tuple[int, int] | None = None):
    """The model's LossOutput under ``train`` (a TrainConfig); ``noise`` supplies the
    standard-normal draws (shape ``noise_shape``), else the model draws its own. A
    semi-supervised model also takes the batch's ``labels`` (-1: unlabelled), the ``weights``
    of its unlabelled, labelled and classification terms, and, when ``x`` is one process's
    shard of a batch, the whole batch's ``counts`` of unlabelled and labelled images."""
    if labels is not None:
        return model.loss(x, beta=beta, free_bits=train.free_bits, noise=noise, labels=labels, weights=weights,
                          counts=counts, entropy_weight=train.entropy_weight)
    if train.objective == "iwae":
        return model.iwae_loss(x, train.iw_samples, noise=noise)
    return model.loss(x, beta=beta, free_bits=train.free_bits, noise=noise)


def noise_shape(model, train, batch: int) -> tuple[int, ...]:
    """The standard-normal draws one training step needs for ``batch`` examples."""
    width = getattr(model, "noise_dim", model.latent_dim)
    return (train.iw_samples, batch, width) if train.objective == "iwae" else (batch, width)
