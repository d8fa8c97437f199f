"""A model's outputs as images in [0, 1]: decoder means through the transform's inverse
(binarized or PCA inputs come back as pictures). Figures, callbacks, runs and the
reconstruction error all draw their images here."""

from __future__ import annotations

import torch


@torch.no_grad()
def decode_images(model, transform, z: torch.Tensor) -> torch.Tensor:
    """Decoder means at z, as float images in [0, 1] on the model's device; the model's mode is kept."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        return transform.to_images(model.likelihood.mean(model.decode(z.to(device)))).float()
    finally:
        model.train(was_training)
