"""Time to a good model: wall seconds from scratch until the test IW-NLL reaches a target.

    python benchmarks/time_to_quality.py --preset mnist-fast --reference
    python benchmarks/time_to_quality.py --preset mnist-mlp --set train.epochs=30 --eval-epochs 10,20,30

vaelab trains the preset through ``vaelab.train``. At the evaluation epochs a callback
measures the test negative log-likelihood (importance-weighted, K samples, nats per image)
on the first --test-images MNIST test images with vaelab's evaluator; that evaluation is
kept off the clock. The clock is everything else a user waits for: data loading, model
setup, every training step, validation and checkpoints.

--reference also trains the hand-written minimal loop of the anchor model (784-512-512-32
ReLU Bernoulli VAE, batch 128, Adam 1e-3, default denormal handling; 30 epochs took 182 s
here and pythae 191 s) in the same process, one reference epoch after each vaelab epoch,
and evaluates it the same way (its weights copied into a vaelab VAE of the same shape).

--pythae (where pythae is installed; see README.md for its venv; skipped otherwise) also
trains the same network with pythae 0.1.2 itself: ``pythae.models.VAE`` (reconstruction_loss
"bce", the network as plain torch layers with the minimal loop's initial weights, sigmoid
output) and its ``BaseTrainer`` (BaseTrainerConfig: batch 128, Adam, lr 1e-3, epochs
--reference-epochs, no eval set, so it keeps the best model on the training loss). Its
data are vaelab's training images, dynamically binarized by a pythae ``BaseDataset``
subclass (pythae has no dynamic binarization of its own). ``BaseTrainer.train()`` runs
unmodified in a worker thread that a pythae callback pauses at every epoch end, so its
epochs interleave with vaelab's like the minimal loop's (only one thread computes at a
time); its clock counts building the trainer, every epoch and saving the final model,
and stops during the evaluations.
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
from vaelab.prepared_data import eval_images  # noqa: E402
from vaelab.presets import load_preset  # noqa: E402
from vaelab.training.trainer import train  # noqa: E402
from vaelab.transforms import make_transform  # noqa: E402


def reference_config(data):
    preset, overrides = MODELS["mlp-512"]
    config = load_preset(preset)
    config.apply_overrides(overrides + ["train.batch_size=128"])
    config.data.data_dir = data
    return config.validate()


class Reference:
    """A reference trainer stepped one epoch at a time: its clock and its evaluation points."""

    def __init__(self, key, label, epoch, params, finish=None):
        self.key, self.label = key, label
        self.epoch, self.params, self.finish = epoch, params, finish  # callables
        self.seconds = 0.0
        self.final_seconds = None  # with finish(): everything, including the final save
        self.points: list[dict] = []  # epoch, seconds, nll, elbo


class Clock:
    """Trainer callback: evaluates at chosen epochs, off the clock; optionally steps references."""

    def __init__(self, config, eval_epochs, test_images, k, reference_epochs=0, ref_config=None,
                 minimal=False, pythae_dir=None):
        self.config, self.eval_epochs, self.k = config, set(eval_epochs), k
        self.test_images = test_images
        self.reference_epochs, self.ref_config = reference_epochs, ref_config
        self.minimal, self.pythae_dir = minimal, pythae_dir
        self.off_clock = 0.0
        self.points: list[dict] = []  # vaelab: epoch, seconds, nll
        self.refs: list[Reference] = []

    def evaluate(self, model, transform):
        result = evaluate_model(model, transform, self.test_images, iw_samples=self.k, batch_size=500, seed=0)
        model.train()
        return result

    def on_train_start(self, trainer):
        if not self.reference_epochs:
            return
        images = trainer.train_images.cpu()
        self.ref_model = VAE(self.ref_config.model, trainer.data.event_shape)
        self.transform = trainer.data.transform
        if self.minimal:
            loop = ReferenceLoop("minimal", self.ref_config, images, 128, seed=7)
            self.refs.append(Reference("minimal", "minimal loop", loop.epoch, lambda: loop.params))
        if self.pythae_dir is not None:
            import _pythae

            run = _pythae.PythaeTraining(
                lambda: _pythae.anchor_model(self.ref_config, trainer.data.event_shape, seed=7), images,
                batch_size=128, epochs=self.reference_epochs, lr=1e-3, out_dir=self.pythae_dir,
                threads=torch.get_num_threads(), cuda=trainer.device.type == "cuda")
            self.refs.append(Reference("pythae", f"pythae {_pythae.version()} BaseTrainer", run.epoch, run.params,
                                       run.finish))

    def step_reference(self, epoch):
        for ref in self.refs:
            start = time.perf_counter()
            ref.epoch()
            ref.seconds += time.perf_counter() - start
            if epoch in self.eval_epochs or epoch == self.reference_epochs:
                with torch.no_grad():
                    for mine, theirs in zip(self.ref_model.parameters(), ref.params(), strict=True):
                        mine.copy_(theirs.view_as(mine))
                result = self.evaluate(self.ref_model, self.transform)
                ref.points.append({"epoch": epoch, "seconds": ref.seconds, "nll": result["nll_iw"],
                                   "elbo": result["elbo"]})
                print(f"  {ref.label} epoch {epoch}: {ref.seconds:.0f} s, IW-NLL {result['nll_iw']:.2f}", flush=True)
            if epoch == self.reference_epochs and ref.finish is not None:
                start = time.perf_counter()
                ref.finish()
                ref.final_seconds = ref.seconds + time.perf_counter() - start

    def on_epoch_end(self, trainer, row):
        # everything in here (the references' epochs, evaluations) is off vaelab's clock
        paused = time.perf_counter()
        epoch = row["epoch"]
        if self.refs and epoch <= self.reference_epochs:
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
    parser.add_argument("--pythae", action="store_true",
                        help="also train pythae's VAE with its BaseTrainer, interleaved (skipped without pythae)")
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
    use_pythae = args.pythae
    if use_pythae:
        import _pythae

        if not _pythae.available():
            print("pythae is not installed: --pythae skipped (see benchmarks/README.md for a venv with it)")
            use_pythae = False
        else:
            print(f"pythae {_pythae.version()}: its VAE and BaseTrainer, interleaved epoch by epoch (a worker "
                  f"thread paused at each epoch end); training data dynamically binarized by a BaseDataset subclass")
    with_refs = args.reference or use_pythae
    with tempfile.TemporaryDirectory() as tmp:
        clock = Clock(config, eval_epochs, test, args.iw_samples,
                      reference_epochs=args.reference_epochs if with_refs else 0,
                      ref_config=reference_config(data) if with_refs else None,
                      minimal=args.reference, pythae_dir=str(Path(tmp) / "pythae") if use_pythae else None)
        out = Path(args.out) if args.out else Path(tmp) / "run"
        clock.start = time.perf_counter()
        train(config, out, progress=False, overwrite=True, callbacks=[clock])
        if clock.refs:  # the references may need more epochs than the preset has
            for epoch in range(epochs + 1, args.reference_epochs + 1):
                clock.step_reference(epoch)
    rows = []
    for target in (float(t) for t in args.targets.split(",")):
        mine = first_reaching(clock.points, target)
        row = [target, f"{mine['seconds']:.0f} s (epoch {mine['epoch']})" if mine else "not reached"]
        for ref in clock.refs:
            theirs = first_reaching(ref.points, target)
            row += [f"{theirs['seconds']:.0f} s (epoch {theirs['epoch']})" if theirs else "not reached",
                    theirs["seconds"] / mine["seconds"] if mine and theirs else "-"]
        rows.append(row)
    header = ["target IW-NLL", f"vaelab {args.preset}"]
    for ref in clock.refs:
        header += [ref.label, f"speed-up vs {ref.key}"]
    print()
    print(table(header, rows))
    final = clock.points[-1]
    print(f"\nvaelab final: epoch {final['epoch']}, {final['seconds']:.0f} s, test IW-NLL {final['nll']:.2f} "
          f"(K={args.iw_samples}, {len(test)} images), ELBO {final['elbo']:.2f}")
    for ref in clock.refs:
        if ref.points:
            last = ref.points[-1]
            total = f"; {ref.final_seconds:.0f} s with the final model save" if ref.final_seconds is not None else ""
            print(f"{ref.label} final: epoch {last['epoch']}, {last['seconds']:.0f} s{total}, IW-NLL {last['nll']:.2f}, "
                  f"ELBO {last['elbo']:.2f}")
    if args.json:
        refs = {ref.key: {"label": ref.label, "points": ref.points, "final_seconds": ref.final_seconds}
                for ref in clock.refs}
        Path(args.json).write_text(json.dumps({"machine": machine(), "preset": args.preset, "set": args.set,
                                               "vaelab": clock.points,
                                               "reference": refs.get("minimal", {}).get("points", []),
                                               "references": refs}, indent=2))


if __name__ == "__main__":
    main()
