"""Another model's encoder as a transform: Kingma et al.'s M1+M2 trains M2 on the latent
codes of a trained VAE (M1), named by its run directory (data.transform=m1, data.m1_run;
rundir.load.m1_codes loads it).

Training batches are codes drawn from M1's posterior, z ~ q(z|x) (a fresh draw each time,
like dynamic binarization); evaluation, figures and probes use its posterior means.
Codes go back to images through M1's decoder. M1's weights stay fixed.

With data.m1_units=active, M2 sees only the units active on M1's training images (the
others carry no information about x: their draws are noise from the prior); decoding puts
the dropped units back at 0, the prior mean and near their posterior means.
"""

from __future__ import annotations

import math
import torch

from .errors import VaelabError
from .transforms import Transform


class M1Codes(Transform):
    name = "m1"
    pixel_log_jacobian = None  # codes, not 8-bit pixels: nats per code, no bits/dim

    def __init__(self, run, units: torch.Tensor | None = None):
        super().__init__()
        self.run = run
        self.units = units  # indices of the units kept; None: all of them
        for p in run.model.parameters():
            p.requires_grad_(False)

    def _kept(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.units is None else z[:, self.units]

    def to(self, device) -> "M1Codes":
        self.run.model.to(device)
        if self.units is not None:
            self.units = self.units.to(device)
        self.run.transform = self.run.transform.to(device) if hasattr(self.run.transform, "to") else self.run.transform
        return self

    def event_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.run.model.latent_dim if self.units is None else len(self.units),)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        model = self.run.model
        model.eval()
        q = model.encode(self.run.transform(images, generator=generator))
        return self._kept(q.rsample(generator))

    @torch.no_grad()
    def fixed(self, images: torch.Tensor) -> torch.Tensor:
        self.run.model.eval()
        return self._kept(self.run.model.encode(self.run.transform.fixed(images)).mean)

    @torch.no_grad()
    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        model = self.run.model
        model.eval()
        z = x.float()
        if self.units is not None:
            z = x.new_zeros((len(x), model.latent_dim), dtype=torch.float32)
            z[:, self.units] = x.float()
        return self.run.transform.to_images(model.likelihood.mean(model.decode(z)))

    def describe(self) -> str:
        if self.units is None:
            return f"the {self.run.model.latent_dim}-D posterior codes of {self.run.path}"
        return (f"the posterior codes of {self.run.path}, its {len(self.units)} active units of "
                f"{self.run.model.latent_dim}")


def check_codes_shape(transform: M1Codes, image_shape: tuple[int, ...]) -> None:
    """M1 must have been trained on images of this dataset's shape."""
    if tuple(transform.run.image_shape) != tuple(image_shape):
        raise VaelabError(f"data.m1_run was trained on images of shape {transform.run.image_shape}, this dataset's are "
                          f"{tuple(image_shape)}: train M1 on the same dataset")
    assert math.prod(transform.event_shape(image_shape)) > 0
