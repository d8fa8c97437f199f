"""Time to a good model: wall seconds from scratch until the test IW-NLL reaches a target.

    python benchmarks/time_to_quality.py --preset mnist-fast --reference
    python benchmarks/time_to_quality.py --preset mnist-mlp --set train.epochs=30 --eval-epochs 10,20,30

vaelab trains the preset through ``vaelab.train``. At the evaluation epochs a callback
measures the test negative log-likelihood (importance-weighted, K samples, nats per image)
on the first --test-images MNIST test images with vaelab's evaluator; that evaluation is
kept off the clock. The clock is everything else a user waits for: data loading, model
setup, every training step, validation and checkpoints.

--reference also trains the hand-written minimal loop of issue 6's anchor (784-512-512-32
ReLU Bernoulli VAE, batch 128, Adam 1e-3, default denormal handling; 30 epochs took 182 s
here and pythae 191 s) in the same process, one reference epoch after each vaelab epoch,
and evaluates it the same way (its weights copied into a vaelab VAE of the same shape).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, data_dir, machine, table  # noqa: E402
from train_throughput import MODELS, ReferenceLoop  # noqa: E402

from vaelab.evaluate import evaluate_model  # noqa: E402
from vaelab.model import VAE  # noqa: E402
from vaelab.pipeline import eval_images  # noqa: E402
from vaelab.presets import load_preset  # noqa: E402
from vaelab.train.trainer import train  # noqa: E402
from vaelab.transforms import make_transform  # noqa: E402


def reference_config(data):
    preset, overrides = MODELS["mlp-512"]
    config = load_preset(preset)
    config.apply_overrides(overrides + ["train.batch_size=128"])
    config.data.data_dir = data
    return config.validate()


class Clock:
    """Trainer callback: evaluates at chosen epochs, off the clock; optionally steps a reference."""

    def __init__(self, config, eval_epochs, test_images, k, reference_epochs=0, ref_config=None):
        self.config, self.eval_epochs, self.k = config, set(eval_epochs), k
        self.test_images = test_images
        self.reference_epochs, self.ref_config = reference_epochs, ref_config
        self.off_clock = 0.0
        self.points: list[dict] = []  # vaelab: epoch, seconds, nll
        self.ref_points: list[dict] = []
        self.ref_seconds = 0.0
        self.ref = None

    def evaluate(self, model, transform):
        result = evaluate_model(model, transform, self.test_images, iw_samples=self.k, batch_size=500, seed=0)
        model.train()
        return result

    def on_train_start(self, trainer):
        if self.reference_epochs:
            self.ref = ReferenceLoop("minimal", self.ref_config, trainer.train_images.cpu(), 128, seed=7)
            self.ref_model = VAE(self.ref_config.model, trainer.data.event_shape)
            self.transform = trainer.data.transform

    def step_reference(self, epoch):
        start = time.perf_counter()
        self.ref.epoch()
        self.ref_seconds += time.perf_counter() - start
        if epoch in self.eval_epochs or epoch == self.reference_epochs:
            with torch.no_grad():
                for mine, theirs in zip(self.ref_model.parameters(), self.ref.params):
                    mine.copy_(theirs.view_as(mine))
            result = self.evaluate(self.ref_model, self.transform)
            self.ref_points.append({"epoch": epoch, "seconds": self.ref_seconds, "nll": result["nll_iw"],
                                    "elbo": result["elbo"]})
            print(f"  reference epoch {epoch}: {self.ref_seconds:.0f} s, IW-NLL {result['nll_iw']:.2f}", flush=True)

    def on_epoch_end(self, trainer, row):
        # everything in here (the reference's epoch, evaluations) is off vaelab's clock
        paused = time.perf_counter()
        epoch = row["epoch"]
        if self.ref is not None and epoch <= self.reference_epochs:
            self.step_reference(epoch)
        if epoch in self.eval_epochs or epoch == self.config.train.epochs:
            seconds = paused - self.start - self.off_clock
            result = self.evaluate(trainer.model, trainer.data.transform)
            self.points.append({"epoch": epoch, "seconds": seconds, "nll": result["nll_iw"], "elbo": result["elbo"]})
            print(f"  vaelab epoch {epoch}: {seconds:.0f} s, IW-NLL {result['nll_iw']:.2f}, "
                  f"ELBO {result['elbo']:.2f}", flush=True)
        self.off_clock += time.perf_counter() - paused


def first_reaching(points, target):
    for p in points:
        if p["nll"] <= target:
            return p
    return None


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mnist-fast")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--eval-epochs", default="", help="comma list (default: every 5th and the last)")
    parser.add_argument("--targets", default="95,91,90", help="test IW-NLL targets, nats per image")
    parser.add_argument("--test-images", type=int, default=2000, help="first N MNIST test images (pythae used 2000)")
    parser.add_argument("--iw-samples", type=int, default=1000)
    parser.add_argument("--reference", action="store_true", help="also train the minimal loop, interleaved")
    parser.add_argument("--reference-epochs", type=int, default=30)
    parser.add_argument("--out", help="keep the vaelab run directory here")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = data_dir(args.data_dir)
    config = load_preset(args.preset)
    config.apply_overrides(args.set)
    config.data.data_dir = data
    if args.threads:
        config.train.threads = args.threads
    config.validate()
    epochs = config.train.epochs
    eval_epochs = ([int(e) for e in args.eval_epochs.split(",") if e] or
                   sorted(set(range(5, max(epochs, args.reference_epochs if args.reference else 0) + 1, 5))))
    test, _ = eval_images(config.data, "test", make_transform(config.data.transform))
    test = test[:args.test_images]
    print(machine())
    print(f"vaelab preset {args.preset} {' '.join(args.set)}: {epochs} epochs; test IW-NLL with K={args.iw_samples} "
          f"on {len(test)} test images at epochs {eval_epochs}", flush=True)
    clock = Clock(config, eval_epochs, test, args.iw_samples,
                  reference_epochs=args.reference_epochs if args.reference else 0,
                  ref_config=reference_config(data) if args.reference else None)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "run"
        clock.start = time.perf_counter()
        train(config, out, progress=False, overwrite=True, callbacks=[clock])
    if clock.ref is not None:  # the reference may need more epochs than the preset has
        for epoch in range(epochs + 1, args.reference_epochs + 1):
            clock.step_reference(epoch)
    rows = []
    for target in (float(t) for t in args.targets.split(",")):
        mine, theirs = first_reaching(clock.points, target), first_reaching(clock.ref_points, target)
        row = [target, f"{mine['seconds']:.0f} s (epoch {mine['epoch']})" if mine else "not reached"]
        if clock.ref is not None:
            row += [f"{theirs['seconds']:.0f} s (epoch {theirs['epoch']})" if theirs else "not reached",
                    theirs["seconds"] / mine["seconds"] if mine and theirs else "-"]
        rows.append(row)
    header = ["target IW-NLL", f"vaelab {args.preset}"] + (["minimal loop", "speed-up"] if clock.ref else [])
    print()
    print(table(header, rows))
    final = clock.points[-1]
    print(f"\nvaelab final: epoch {final['epoch']}, {final['seconds']:.0f} s, test IW-NLL {final['nll']:.2f} "
          f"(K={args.iw_samples}, {len(test)} images), ELBO {final['elbo']:.2f}")
    if clock.ref_points:
        last = clock.ref_points[-1]
        print(f"minimal loop final: epoch {last['epoch']}, {last['seconds']:.0f} s, IW-NLL {last['nll']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "preset": args.preset, "set": args.set,
                                               "vaelab": clock.points, "reference": clock.ref_points}, indent=2))


if __name__ == "__main__":
    main()
