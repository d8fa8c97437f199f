"""A model's outputs as images in [0, 1]: decoder means through the transform's inverse
(binarized or PCA inputs come back as pictures). Figures, callbacks, runs and the
reconstruction error all draw their images here."""

from __future__ import annotations

import torch


@torch.no_grad()
def decode_images(model, transform, z: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """Decoder means at z (and, for a model with classes, the class of each code), as float
    images in [0, 1] on the model's device; the model's mode is kept."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        params = model.decode(z.to(device)) if classes is None else model.decode(z.to(device), classes.to(device))
        return transform.to_images(model.likelihood.mean(params)).float()
    finally:
        model.train(was_training)
