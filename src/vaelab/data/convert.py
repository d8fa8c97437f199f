"""Channel and size conversion of an (N, C, H, W) uint8 array, matching Pillow's results."""

from __future__ import annotations

import numpy as np


def convert_images(images: np.ndarray, channels: int | None = None, size: int | None = None) -> np.ndarray:
    """Return ``images`` with ``channels`` (1 or 3) and square ``size``; unchanged if they match."""
    if channels is not None and images.shape[1] != channels:
        if channels == 1:  # ITU-R 601-2 luma, the same fixed-point formula Pillow's "L" uses
            r, g, b = (images[:, i].astype(np.uint32) for i in range(3))
            images = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[:, None]
        else:
            images = np.repeat(images, 3, axis=1)
    if size is not None and images.shape[2:] != (size, size):
        from PIL import Image

        out = np.empty(images.shape[:2] + (size, size), dtype=np.uint8)
        for i, img in enumerate(images):
            if img.shape[0] == 1:
                out[i, 0] = np.asarray(square_resize(Image.fromarray(img[0], "L"), size))
            else:
                out[i] = np.asarray(square_resize(Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)), "RGB"), size)).transpose(2, 0, 1)
        images = out
    return np.ascontiguousarray(images)


def square_resize(im, size: int):
    """Center-crop a PIL image to a square (keeps the aspect ratio), then resize to size x size."""
    from PIL import Image

    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return im.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
