"""How long a long run takes: seconds per epoch of a big preset, projected to its full length.

    python benchmarks/long_run.py                                  # svhn-pca on the CIFAR-10 JPEGs
    python benchmarks/long_run.py --set train.autocast=bf16

Trains the preset through ``vaelab.train`` for --epochs epochs on --limit images (SVHN is not
available here: the preset runs on the CIFAR-10 training JPEGs, 32x32 RGB, as its
description allows) and reads the training images/s of the epochs after the first from
metrics.jsonl. The seconds per epoch are then given for --epoch-images images (SVHN
train: 73,257) and for the preset's full number of epochs (1000 for svhn-pca; its early
stopping usually ends it sooner).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, data_dir, machine, median  # noqa: E402

from vaelab.presets import load_preset  # noqa: E402
from vaelab.training.trainer import train  # noqa: E402


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--preset", default="svhn-pca")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--limit", type=int, default=10000, help="training images used for the timing")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs + 1 warm-up")
    parser.add_argument("--epoch-images", type=int, default=73257, help="images in one epoch of the real run")
    args = parser.parse_args(argv)
    data = Path(data_dir(args.data_dir))
    config = load_preset(args.preset)
    full_epochs = config.train.epochs
    config.apply_overrides([f"data.name=folder:{data / 'cifar10' / 'train'}", "data.channels=3", "data.image_size=32",
                            f"data.limit={args.limit}", f"train.epochs={args.epochs}", "train.early_stopping=none"]
                           + args.set)
    if args.threads:
        config.train.threads = args.threads
    config.validate()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = train(config, Path(tmp) / "run", progress=False)
        total = time.perf_counter() - start
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rate = median([r["images_per_s"] for r in rows[1:]] or [rows[0]["images_per_s"]])
    epoch = args.epoch_images / rate
    print(f"preset {args.preset} {' '.join(args.set)}: {rate:,.0f} training images/s "
          f"(median of epochs 2..{args.epochs}, {args.limit} images each; whole run incl. data and PCA {total:.0f} s)")
    print(f"one epoch of {args.epoch_images:,} images: {epoch:.0f} s; {full_epochs} epochs: "
          f"{epoch * full_epochs / 3600:.1f} h (training steps only; validation adds about "
          f"{config.data.val_fraction:.0%} of a forward pass)")


if __name__ == "__main__":
    main()
