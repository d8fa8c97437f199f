"""From uint8 images to the model's data space, and back to images for display.

Images stay uint8 (N, C, H, W) in memory; each batch is converted on the fly here.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import VaelabError


class Transform:
    """Base: model space = pixel values scaled to [0, 1]."""

    name = "scale"
    #: the map is 8-bit pixels -> x = u / 255, so log-densities convert to pixel units
    #: with + D * log(255) (bits/dim); None where the data are not 8-bit pixels
    pixel_log_jacobian: float | None = math.log(255.0)

    def prepare(self, images: np.ndarray, seed: int) -> np.ndarray:
        """A one-off change to the stored uint8 images (static binarization); default none."""
        return images

    def event_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(image_shape)

    def __init__(self, dequantize: bool = False):
        self.dequantize = dequantize

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A training batch: uint8 (B, C, H, W) -> float, possibly random (dynamic binarization,
        dequantization)."""
        if self.dequantize:  # x = (u + U(-1/2, 1/2)) / 255: uniform over each pixel's 8-bit bin
            noise = torch.rand(images.shape, generator=generator, device=images.device)
            return images.float().add_(noise).sub_(0.5).div_(255.0)
        return images.float().div_(255.0)

    def fixed(self, images: torch.Tensor) -> torch.Tensor:
        """The deterministic version used for validation, evaluation, figures and probes: a
        function of each image alone (not of its batch, position or any seed): u / 255."""
        return images.float().div_(255.0)

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space tensor -> float images in [0, 1], (B, C, H, W)."""
        return x.clamp(0.0, 1.0)

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def compile(self) -> None:
        """torch.compile what a training batch's conversion can fuse (train.compile); here nothing:
        u / 255 is one pass already."""


#: bits of randomness per pixel in :func:`bernoulli_u8`; three fields fill the 63 random
#: bits of one int64 draw
_FIELD_BITS = 21
_FIELD_MASK = (1 << _FIELD_BITS) - 1


def pixels_below(words: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The integer half of :func:`bernoulli_u8`: x = [f * 255 < u * 2^21] for the 21-bit
    fields f of the int64 ``words``, as float32 in the images' shape. No view of an input is
    written, so torch.compile fuses it into one pass (no graph break)."""
    # the fields are cut from the words' 32-bit halves (little-endian: low, high) with int32
    # arithmetic: x86's AVX2 has no int64 shifts or products, so int64 ops run one element at
    # a time and took half the binarization's time (BENCHMARKS.md, section 1)
    halves = words.view(torch.int32).view(-1, 2)
    low, high = halves[:, 0], halves[:, 1]
    fields = torch.stack([
        low & _FIELD_MASK,  # bits 0-20
        # bits 21-41: the low half's top 11 (a logical shift) under the high half's bottom 10
        ((low >> _FIELD_BITS) & ((1 << (32 - _FIELD_BITS)) - 1))
        | ((high & ((1 << (2 * _FIELD_BITS - 32)) - 1)) << (32 - _FIELD_BITS)),
        high >> (2 * _FIELD_BITS - 32),  # bits 42-62
    ], 1).view(-1)[:images.numel()]
    x = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    # comparing straight into float32 skips a bool tensor and its conversion (0.5 ms of 3.3 a 1024 batch)
    torch.lt(fields.mul_(255), images.reshape(-1).to(torch.int32).bitwise_left_shift_(_FIELD_BITS), out=x.view(-1))
    return x


def bernoulli_u8(images: torch.Tensor, generator: torch.Generator | None = None, below=pixels_below) -> torch.Tensor:
    """x ~ Bernoulli(u / 255) for uint8 ``images`` u, as float32 0/1.

    torch.bernoulli draws one 32-bit Mersenne-Twister number per pixel, one at a time:
    1.4-1.5 ms for a 128 x 784 batch on one thread, 1.7-2x this function's time
    (benchmarks/step_profile.py). Here each int64 draw (63 random bits) gives three 21-bit
    uniforms f, and x = [floor(f * 255 / 2^21) < u] = [f * 255 < u * 2^21], so
    P(x = 1) = ceil(u * 2^21 / 255) / 2^21: within 5e-7 of u / 255 for every u, and exact
    for u = 0 and 255. ``below`` replaces :func:`pixels_below` (its torch.compile'd self).
    """
    m = (images.numel() + 2) // 3
    words = torch.empty(m, dtype=torch.int64, device=images.device).random_(generator=generator)
    return below(words, images)


def _int64(constant: int) -> int:
    """A 64-bit constant as the signed int64 with the same bits."""
    return constant - (1 << 64) if constant >= 1 << 63 else constant


_GOLDEN, _MIX1, _MIX2 = (_int64(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shift_right(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser (Steele et al. 2014): a bijective scramble of 64-bit words;
    int64 products wrap around, as the algorithm's unsigned ones do."""
    x = x + _GOLDEN
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def image_keyed_bernoulli(images: torch.Tensor) -> torch.Tensor:
    """x ~ Bernoulli(u / 255) for uint8 ``images`` u, drawn from each image's own pixels.

    Each image is hashed to a 64-bit key; each pixel's uniform is a hash of that key and the
    pixel's position (its top 21 bits, as in :func:`bernoulli_u8`: P(x = 1) within 5e-7 of
    u / 255). So an image is binarized the same way in every batch, at every position, under
    every seed and in every command (eval, validation, figures, probes), on any device.
    """
    flat = images.reshape(len(images), -1).long()
    position = torch.arange(flat.shape[1], device=images.device, dtype=torch.int64)
    key = _splitmix64((flat * _splitmix64(position)).sum(1))  # the sum wraps around too
    fields = _shift_right(_splitmix64(key[:, None] ^ _splitmix64(position + _GOLDEN)[None, :]), 64 - _FIELD_BITS)
    below = (fields * 255 >> _FIELD_BITS) < flat
    return below.view(images.shape).to(torch.float32)


class DynamicBinarize(Transform):
    """A fresh Bernoulli draw per batch with p = u / 255 (Salakhutdinov & Murray)."""

    name = "binarize-dynamic"
    pixel_log_jacobian = None  # binary data: nats per image, no bits/dim of 8-bit pixels

    def __init__(self, dequantize: bool = False):
        super().__init__(dequantize)
        self._below = pixels_below  # or its compiled self (compile())

    def __call__(self, images, generator=None):
        return bernoulli_u8(images, generator, self._below)

    def compile(self) -> None:
        # the draw stays eager (the generator's stream); the integer work after it fuses into
        # one pass, the same bits: 1.8 against 3.3 ms a 1024 x 784 batch (BENCHMARKS.md)
        self._below = torch.compile(pixels_below, dynamic=False)

    def fixed(self, images):
        # a draw keyed on each image, independent of training, batch and seed: every
        # evaluation of a split sees the same binary images
        return image_keyed_bernoulli(images)


class StaticBinarize(Transform):
    """One fixed, seeded draw of the whole dataset, stored as 0/255 and reused every epoch."""

    name = "binarize-static"
    pixel_log_jacobian = None

    def prepare(self, images: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        draw = rng.random(images.shape, dtype=np.float32) < images / np.float32(255.0)
        return draw.astype(np.uint8) * np.uint8(255)


def make_transform(name: str, dequantize: bool = False) -> Transform:
    if name == "scale":
        return Transform(dequantize)
    if name == "binarize-dynamic":
        return DynamicBinarize()
    if name == "binarize-static":
        return StaticBinarize()
    if name == "pca":
        raise VaelabError("the pca transform is fitted on data: use vaelab.pca.fit_pca")
    raise VaelabError(f"unknown data.transform {name!r}")
