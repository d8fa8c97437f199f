"""Another model's encoder as a transform: Kingma et al.'s M1+M2 trains M2 on the latent
codes of a trained VAE (M1), named by its run directory (data.transform=m1, data.m1_run;
rundir.load.m1_codes loads it).

Training batches are codes drawn from M1's posterior, z ~ q(z|x) (a fresh draw each time,
like dynamic binarization); evaluation, figures and probes use its posterior means.
Codes go back to images through M1's decoder. M1's weights stay fixed.
"""

from __future__ import annotations

import math
import torch

from .errors import VaelabError
from .transforms import Transform


class M1Codes(Transform):
    name = "m1"
    pixel_log_jacobian = None  # codes, not 8-bit pixels: nats per code, no bits/dim

    def __init__(self, run):
        super().__init__()
        self.run = run
        for p in run.model.parameters():
            p.requires_grad_(False)

    def to(self, device) -> "M1Codes":
        self.run.model.to(device)
        self.run.transform = self.run.transform.to(device) if hasattr(self.run.transform, "to") else self.run.transform
        return self

    def event_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.run.model.latent_dim,)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        model = self.run.model
        model.eval()
        q = model.encode(self.run.transform(images, generator=generator))
        return q.rsample(generator)

    @torch.no_grad()
    def fixed(self, images: torch.Tensor) -> torch.Tensor:
        self.run.model.eval()
        return self.run.model.encode(self.run.transform.fixed(images)).mean

    @torch.no_grad()
    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        model = self.run.model
        model.eval()
        return self.run.transform.to_images(model.likelihood.mean(model.decode(x.float())))

    def describe(self) -> str:
        return f"the {self.run.model.latent_dim}-D posterior codes of {self.run.path}"


def check_codes_shape(transform: M1Codes, image_shape: tuple[int, ...]) -> None:
    """M1 must have been trained on images of this dataset's shape."""
    if tuple(transform.run.image_shape) != tuple(image_shape):
        raise VaelabError(f"data.m1_run was trained on images of shape {transform.run.image_shape}, this dataset's are "
                          f"{tuple(image_shape)}: train M1 on the same dataset")
    assert math.prod(transform.event_shape(image_shape)) > 0
