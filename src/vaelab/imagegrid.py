"""Image grids as PNG files (Pillow): the quick pictures `vaelab sample` and `demo` write."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from .atomicio import write_output


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """float images in [0, 1], (N, C, H, W) -> uint8 array (H', W', C) with a border."""
    images = images.detach().cpu().float().clamp(0, 1)
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.full((c, pad + rows * (h + pad), pad + nrow * (w + pad)), pad_value)
    for i in range(n):
        r, k = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        grid[:, top:top + h, left:left + w] = images[i]
    array = (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    return array[:, :, 0] if c == 1 else array


def paired_rows(top: torch.Tensor, bottom: torch.Tensor, per_row: int = 10) -> tuple[torch.Tensor, int]:
    """Rows of ``top`` images, each above the same positions of ``bottom`` (originals over
    their reconstructions), the last pair padded with white; returns (images, row width)."""
    width = max(1, min(per_row, len(top)))
    rows = []
    for start in range(0, len(top), width):
        for images in (top, bottom):
            row = images[start:start + width].float().cpu()
            if len(row) < width:  # pad the last pair so every row has the same length
                row = torch.cat([row, torch.ones((width - len(row), *row.shape[1:]))])
            rows.append(row)
    return torch.cat(rows), width


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 2) -> Path:
    """Save a grid PNG, nearest-neighbour upscaled so small digits stay visible."""
    from PIL import Image

    image = Image.fromarray(make_grid(images, nrow))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return write_output(path, buffer.getvalue())
