"""Colour time to quality: held-out bits/dim against minutes of training on one CPU thread.

    python benchmarks/colour.py --preset svhn-fast --minutes 60 --eval-at 5,10,20,40,60 --out RUN --json colour.json
    python benchmarks/colour.py --preset svhn-conv-gaussian --minutes 10 --eval-at 5,10 --out REF --json ref.json

SVHN is not available here: CIFAR-10's 50,000 training JPEGs stand in (data.name=folder:
DATA/cifar10/train, 3 channels, 32x32); the preset's data.val_fraction of them (the same
images for every run) are held out and never trained on. The preset trains until --minutes
of training have passed on the clock, then stops as a signal would (checkpoint saved, the
run resumable). At each --eval-at minute (checked after every step) the bits/dim of
--images held-out images, spread evenly over all of them (every class), is measured off
the clock with vaelab's evaluator: -log P(u) of the 8-bit pixels, importance-weighted with
K=--k samples (the likelihood's own pmf, or a Gaussian's exact bin masses). Images seen,
epochs and images/s come with each point. The clock and the evaluations are
benchmarks/families.py's; the figure is scripts/families_figure.py --metric bits_per_dim.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, data_dir, machine, report  # noqa: E402
from families import Clock  # noqa: E402

from vaelab.prepared_data import eval_images  # noqa: E402
from vaelab.presets import load_preset  # noqa: E402
from vaelab.rundir.load import load_run  # noqa: E402
from vaelab.training.trainer import train  # noqa: E402
from vaelab.transforms import make_transform  # noqa: E402


class MinuteClock(Clock):
    """families.Clock evaluated at chosen minutes, checked after every step (an epoch is
    several minutes here), with the images seen so far."""

    def __init__(self, images, k: int, eval_at: list[float], log):
        super().__init__(images, None, k, eval_minutes=eval_at[0], budget_minutes=eval_at[-1], log=log)
        self.marks = [m * 60 for m in eval_at]
        self.seen = 0

    def on_step_end(self, trainer, step, beta):
        self.seen += trainer.config.train.batch_size
        seconds = self.training_seconds()
        if self.marks and seconds >= self.marks[0]:
            while self.marks and self.marks[0] <= seconds:
                self.marks.pop(0)
            self.measure(trainer, trainer.epoch)
            point = self.points[-1]
            point.update(images_seen=self.seen, epochs_seen=self.seen / len(trainer.train_images),
                         images_per_s=self.seen / seconds)
            self.log({key: point[key] for key in ("minutes", "bits_per_dim", "elbo", "images_seen",
                                                  "epochs_seen", "images_per_s")})
        if not self.marks:
            trainer.stop_requested = "time budget spent"

    def on_epoch_end(self, trainer, row):  # the steps decide
        pass


def spread(images, n: int):
    """n images evenly spaced over the held-out ones: the folder is read class by class, so its
    first n held-out images are one or two classes (the first 500: airplanes and automobiles)."""
    return images[torch.linspace(0, len(images) - 1, min(n, len(images))).round().long()]


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--preset", default="svhn-fast")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--minutes", type=float, default=60.0, help="training minutes on the clock")
    parser.add_argument("--eval-at", default="5,10,20,40,60", help="minutes at which to evaluate (the last: the end)")
    parser.add_argument("--images", type=int, default=1000, help="held-out images evaluated at each point")
    parser.add_argument("--k", type=int, default=20, help="importance samples at each point")
    parser.add_argument("--final-k", type=int, default=100)
    parser.add_argument("--final-images", type=int, default=0, help="0: every held-out image")
    parser.add_argument("--out", required=True, help="the run directory (kept: samples, resume)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = data_dir(args.data_dir)
    config = load_preset(args.preset)
    config.apply_overrides([f"data.name=folder:{Path(data) / 'cifar10' / 'train'}", "data.channels=3",
                            "data.image_size=32", *args.set])
    if args.threads:
        config.train.threads = args.threads
    config.validate()
    eval_at = sorted({float(m) for m in args.eval_at.split(",") if m} | {args.minutes})
    eval_at = [m for m in eval_at if m <= args.minutes]
    images, _ = eval_images(config.data, "val", make_transform(config.data.transform))
    clock = MinuteClock(spread(images, args.images), args.k, eval_at, log=lambda p: print(p, flush=True))
    print(machine(), flush=True)
    try:
        train(config, args.out, overwrite=True, progress=False, callbacks=[clock])
    except KeyboardInterrupt:  # the budget's stop: a checkpoint was saved
        pass
    run = load_run(args.out, which="last")
    started = time.perf_counter()
    final = run.evaluate("val", iw_samples=args.final_k, images=spread(images, args.final_images or len(images)))
    final["eval_seconds"] = time.perf_counter() - started
    last = clock.points[-1] if clock.points else {}
    report({"preset": args.preset, "set": args.set, "machine": machine(), "threads": torch.get_num_threads(),
            "data": "CIFAR-10 training JPEGs, held-out part (data.val_fraction)", "budget_minutes": args.minutes,
            "held_out_images": len(images), "points": clock.points, "final": final,
            "images_seen": last.get("images_seen"), "epochs_seen": last.get("epochs_seen"),
            "parameters": run.description.get("parameters")}, args.json)


if __name__ == "__main__":
    main()
