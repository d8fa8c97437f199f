"""Model families on MNIST: nats against minutes of training, and throughput side by side.

    python benchmarks/families.py curve --preset mnist-vamp --minutes 60 --out RUN --json vamp.json
    python benchmarks/families.py throughput --json throughput.json

curve: trains a preset (with --set overrides) until --minutes of training have passed on the
clock, then stops as a signal would (a checkpoint is saved; the run can be resumed). Every
--eval-minutes it measures the test IW-NLL (K=--k, the first --test-images test images,
dynamic binarization keyed on each image: vaelab eval's rule) off the clock. At the end:
the same with K=--final-k on --final-images test images (default: all 10,000). The clock
is what a user waits for: data loading, setup, every step, validation and checkpoints.

throughput: training images/s of each family beside the plain VAE of the same networks
(784-512-512, 40 latents, batch 256), interleaved step by step in one process, fp32 and
bf16 autocast; and seconds of a K=1000 IW-NLL evaluation of 200 images each.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, data_dir, machine, report  # noqa: E402

from vaelab.config import Config  # noqa: E402
from vaelab.evaluate import evaluate_model  # noqa: E402
from vaelab.families import build_model  # noqa: E402
from vaelab.prepared_data import eval_images  # noqa: E402
from vaelab.presets import load_preset  # noqa: E402
from vaelab.rundir.load import load_run  # noqa: E402
from vaelab.training.trainer import train  # noqa: E402
from vaelab.transforms import make_transform  # noqa: E402


class Clock:
    """Trainer callback: evaluations every few minutes of training, off the clock; a stop
    (as SIGINT would ask) once the budget is spent."""

    def __init__(self, test_images, test_labels, k: int, eval_minutes: float, budget_minutes: float, log):
        self.test_images, self.test_labels, self.k = test_images, test_labels, k
        self.eval_seconds, self.budget = eval_minutes * 60, budget_minutes * 60
        self.next_eval = self.eval_seconds
        self.off_clock = 0.0
        self.points: list[dict] = []
        self.log = log
        self.start = None

    def training_seconds(self) -> float:
        return time.perf_counter() - self.start - self.off_clock

    def on_train_start(self, trainer):
        self.start = time.perf_counter()

    def measure(self, trainer, epoch: int) -> None:
        started = time.perf_counter()
        seconds = self.training_seconds()
        result = evaluate_model(trainer.model, trainer.data.transform, self.test_images, iw_samples=self.k,
                                labels=self.test_labels)
        trainer.model.train()
        self.points.append({"epoch": epoch, "minutes": seconds / 60, "nll_iw": result["nll_iw"],
                            "bits_per_dim": result.get("bits_per_dim"), "elbo": result["elbo"], "active_units": result["active_units"],
                            "class_error": result.get("class_error"),  # a semi-supervised model's
                            "eval_seconds": time.perf_counter() - started})
        self.log(self.points[-1])
        self.off_clock += time.perf_counter() - started

    def on_epoch_end(self, trainer, row):
        seconds = self.training_seconds()
        done = seconds >= self.budget or trainer.epoch >= trainer.config.train.epochs
        if seconds >= self.next_eval or done:
            self.measure(trainer, trainer.epoch)
            while self.next_eval <= seconds:
                self.next_eval += self.eval_seconds
        if done:
            trainer.stop_requested = "time budget spent"


def cmd_curve(args) -> dict:
    config = load_preset(args.preset)
    config.apply_overrides(args.set)
    config.data.data_dir = data_dir(args.data_dir)
    if args.threads:
        config.train.threads = args.threads
    config.validate()
    # the stored test images (fitted transforms, PCA or M1 codes, leave them as they are)
    stored = make_transform("scale" if config.data.transform in ("pca", "m1") else config.data.transform)
    images, labels = eval_images(config.data, "test", stored)
    clock = Clock(images[:args.test_images], labels[:args.test_images], args.k, args.eval_minutes, args.minutes,
                  log=lambda p: print(json.dumps(p), flush=True))
    try:
        train(config, args.out, overwrite=True, progress=False, callbacks=[clock])
    except KeyboardInterrupt:  # the budget's stop: a checkpoint was saved
        pass
    run = load_run(args.out, which="last")
    started = time.perf_counter()
    final_images = images[:args.final_images] if args.final_images else images
    final = run.evaluate("test", iw_samples=args.final_k, limit=len(final_images))  # (with labels: M2's error)
    final["eval_seconds"] = time.perf_counter() - started
    epochs = clock.points[-1]["epoch"] if clock.points else 0
    return {"preset": args.preset, "set": args.set, "machine": machine(), "budget_minutes": args.minutes,
            "epochs": epochs, "training_minutes": clock.points[-1]["minutes"] if clock.points else 0,
            "points": clock.points, "final": final, "parameters": run.description.get("parameters")}


VARIANTS = {
    "vae (N(0,I))": [],
    "vae + mog prior (500)": ["model.prior=mog"],
    "vae + VampPrior (500)": ["model.prior=vamp"],
    "vae + IAF (2 steps)": ["model.flow_steps=2"],
    "ladder, 2 layers": ["model.family=ladder", "model.ladder_dims=[40]"],
    "ladder, 2 layers + VampPrior": ["model.family=ladder", "model.ladder_dims=[40]", "model.prior=vamp"],
}


def cmd_throughput(args) -> dict:
    torch.manual_seed(0)
    base = ["model.latent_dim=40", "model.hidden=[512,512]"]
    models = {}
    for name, overrides in VARIANTS.items():
        config = Config()
        config.apply_overrides(base + overrides)
        model = build_model(config.validate().model, (1, 28, 28))
        models[name] = (model, torch.optim.Adam(model.parameters(), fused=True))
    x = torch.bernoulli(torch.full((256, 1, 28, 28), 0.13))
    rows = {}
    for bf16 in (False, True):
        times = {name: [] for name in models}
        for _ in range(args.rounds):  # interleaved: each round steps every model once
            for name, (model, opt) in models.items():
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = model.loss(x)
                opt.zero_grad()
                out.loss.backward()
                opt.step()
                times[name].append(time.perf_counter() - start)
        for name, ts in times.items():
            best = sorted(ts[1:])[len(ts[1:]) // 2]  # the median after a warm-up step
            rows.setdefault(name, {})["bf16" if bf16 else "fp32"] = 256 / best
    images = torch.bernoulli(torch.full((200, 1, 28, 28), 0.13)).mul(255).to(torch.uint8)
    transform = make_transform("binarize-dynamic")
    for name, (model, _) in models.items():
        start = time.perf_counter()
        evaluate_model(model, transform, images, iw_samples=1000)
        rows[name]["eval_k1000_200_images_s"] = time.perf_counter() - start
    plain = rows["vae (N(0,I))"]
    for row in rows.values():
        row["fp32_vs_plain"] = row["fp32"] / plain["fp32"]
        row["bf16_vs_plain"] = row["bf16"] / plain["bf16"]
    return {"machine": machine(), "rows": rows}


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    curve = sub.add_parser("curve")
    curve.add_argument("--preset", required=True)
    curve.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    curve.add_argument("--minutes", type=float, default=60.0, help="training minutes on the clock")
    curve.add_argument("--eval-minutes", type=float, default=10.0)
    curve.add_argument("--test-images", type=int, default=2000)
    curve.add_argument("--k", type=int, default=1000)
    curve.add_argument("--final-k", type=int, default=5000)
    curve.add_argument("--final-images", type=int, default=0, help="0: the whole test set")
    curve.add_argument("--out", required=True)
    through = sub.add_parser("throughput")
    through.add_argument("--rounds", type=int, default=12)
    for p in (curve, through):
        p.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report(cmd_curve(args) if args.command == "curve" else cmd_throughput(args), args.json)


if __name__ == "__main__":
    main()
