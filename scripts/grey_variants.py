"""Build grey 28x28 datasets that vaelab was not tuned on, as a user would hand them over.

    python scripts/grey_variants.py --data-dir ../shared/data --out GREY

Each variant is an image folder (PNG, one subfolder per class, ``train/`` and ``test/``), the
form `data.name=folder:GREY/NAME` reads; the images of different variants are disjoint, except the two built
later over the digits of ``mnist-8k`` (``back-image``'s backgrounds are CIFAR-10 training images drawn for each
split on its own, so some appear in both splits and in ``cifar-grey``):

- ``mnist-8k``: MNIST training images 0-7,999, test images 0-1,999 (the one tuned on)
- ``inverted``: training images 8,000-15,999 and test images 2,000-3,999, 255 - pixel
- ``rotated``: training images 16,000-23,999 and test images 4,000-5,999, each turned by its
  own angle drawn uniformly from [-45, 45] degrees (seeded)
- ``digits-0-4``: 8,000 training images of the digits 0-4 from 24,000 on, tested on the
  1,934 test images of the digits 5-9 from 6,000 on (classes the model never saw)
- ``noisy-background``: MNIST training images 42,000-49,999, and 50,000-51,999 as the test
  split (MNIST's test images are used up above), each pixel the larger of the digit's and a
  uniform draw from 0-255 (seeded), as in Larochelle et al. 2007's mnist-back-rand
- ``bold-shifted``: MNIST training images 52,000-59,999, and 40,000-41,999 as the test split,
  strokes thickened (a 3x3 maximum filter) and each image moved by its own offset of up to 3
  pixels each way (seeded): another hand, off centre
- ``back-image``: the digits of ``mnist-8k`` over natural-image backgrounds, each pixel the
  larger of the digit's and a random 28x28 crop of a grey CIFAR-10 training image (seeded),
  as in Larochelle et al. 2007's mnist-back-image (built later, for the annealing rule)
- ``gaussian-noise``: the digits of ``mnist-8k`` plus independent Gaussian noise of standard
  deviation 64 grey levels a pixel, clipped to 0-255 (seeded; built later, for the annealing rule)
- ``cifar-grey``: CIFAR-10 training JPEGs (``cifar10/train`` under the data dir) as 28x28
  grey (Pillow's "L" conversion, then a bicubic resize): 8,000 to train on, 2,000 other
  images as the test split (natural images, not digits: for the unsupervised findings)

8,000 training images is the size of the sister dataset a user tried the few-label presets on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

TRAIN, TEST = 8000, 2000


def write_split(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """uint8 (N, 28, 28) images as ROOT/LABEL/NNNNN.png."""
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{i:05d}.png")


def rotate(images: np.ndarray, angles: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(im).rotate(a, resample=Image.BILINEAR)) for im, a in zip(images, angles)])


def bold_shifted(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    bold = [Image.fromarray(im).filter(ImageFilter.MaxFilter(3)) for im in images]
    shifts = rng.integers(-3, 4, (len(images), 2))
    return np.stack([np.asarray(im.transform(im.size, Image.AFFINE, (1, 0, -dx, 0, 1, -dy))) for im, (dx, dy) in zip(bold, shifts)])


def cifar_grey(folder: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    files = sorted(folder.glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no CIFAR-10 JPEGs under {folder}")
    classes = sorted({f.parent.name for f in files})
    picks = rng.choice(len(files), TRAIN + TEST, replace=False)
    images = np.stack([np.asarray(Image.open(files[i]).convert("L").resize((28, 28), Image.BICUBIC)) for i in picks])
    labels = np.array([classes.index(files[i].parent.name) for i in picks])
    return images, labels


def back_image(images: np.ndarray, folder: Path, rng: np.random.Generator) -> np.ndarray:
    files = sorted(folder.glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no CIFAR-10 JPEGs under {folder}")
    picks, corners = rng.choice(len(files), len(images), replace=False), rng.integers(0, 5, (len(images), 2))
    backgrounds = np.stack([np.asarray(Image.open(files[i]).convert("L"))[r:r + 28, c:c + 28]
                            for i, (r, c) in zip(picks, corners)])
    return np.maximum(images, backgrounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="holds mnist/ (the IDX .gz files) and cifar10/train/")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="comma-separated variants to write (default: all)")
    args = parser.parse_args()
    import vaelab

    out = Path(args.out)
    only = [name for name in args.only.split(",") if name]
    taken = [p for p in (out.iterdir() if out.exists() else []) if not only or p.name in only]
    if taken:
        raise SystemExit(f"{taken[0]} exists: choose another --out")
    rng = np.random.default_rng(args.seed)
    train = vaelab.load_dataset("mnist", "train", data_dir=args.data_dir)
    test = vaelab.load_dataset("mnist", "test", data_dir=args.data_dir)
    tr, tr_y = np.asarray(train.images[:, 0]), np.asarray(train.labels)
    te, te_y = np.asarray(test.images[:, 0]), np.asarray(test.labels)

    def block(images, labels, start, n):
        return images[start:start + n], labels[start:start + n]

    # each variant is built only when written; the draws are taken in the order they always were,
    # so a set built alone (--only) is the one built with all the others
    angles = rng.uniform(-45, 45, TRAIN), rng.uniform(-45, 45, TEST)
    low, high = np.flatnonzero(tr_y[24000:] < 5)[:TRAIN] + 24000, np.flatnonzero(te_y[6000:] >= 5)[:TEST] + 6000

    def cifar():
        images, labels = cifar_grey(Path(args.data_dir) / "cifar10" / "train", rng)
        return (images[:TRAIN], labels[:TRAIN]), (images[TRAIN:], labels[TRAIN:])

    def noisy():
        noise = np.random.default_rng(args.seed + 1)  # its own stream: the sets above stay as they were
        return tuple((np.maximum(x, noise.integers(0, 256, x.shape, dtype=np.uint8)), y)
                     for x, y in (block(tr, tr_y, 42000, TRAIN), block(tr, tr_y, 50000, TEST)))

    def bold():
        shifts = np.random.default_rng(args.seed + 2)
        return tuple((bold_shifted(x, shifts), y)
                     for x, y in (block(tr, tr_y, 52000, TRAIN), block(tr, tr_y, 40000, TEST)))

    def backgrounds():
        stream = np.random.default_rng(args.seed + 3)
        return tuple((back_image(x, Path(args.data_dir) / "cifar10" / "train", stream), y)
                     for x, y in (block(tr, tr_y, 0, TRAIN), block(te, te_y, 0, TEST)))

    def gaussian():
        noise = np.random.default_rng(args.seed + 4)
        return tuple((np.clip(x + noise.normal(0, 64, x.shape), 0, 255).round().astype(np.uint8), y)
                     for x, y in (block(tr, tr_y, 0, TRAIN), block(te, te_y, 0, TEST)))

    variants = {
        "mnist-8k": lambda: (block(tr, tr_y, 0, TRAIN), block(te, te_y, 0, TEST)),
        "inverted": lambda: tuple((255 - x, y) for x, y in (block(tr, tr_y, 8000, TRAIN), block(te, te_y, 2000, TEST))),
        "rotated": lambda: tuple((rotate(x, a), y) for (x, y), a in
                                 zip((block(tr, tr_y, 16000, TRAIN), block(te, te_y, 4000, TEST)), angles)),
        "digits-0-4": lambda: ((tr[low], tr_y[low]), (te[high], te_y[high])),
        "cifar-grey": cifar,
        "noisy-background": noisy,
        "bold-shifted": bold,
        "back-image": backgrounds,
        "gaussian-noise": gaussian,
    }
    unknown = sorted(set(only) - set(variants))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}: choose from {sorted(variants)}")
    for name, build in variants.items():
        if only and name not in only:
            continue
        (x, y), (xt, yt) = build()
        write_split(out / name / "train", x, y)
        write_split(out / name / "test", xt, yt)
        print(f"{out / name}: {len(x)} train, {len(xt)} test images", file=sys.stderr)


if __name__ == "__main__":
    main()
