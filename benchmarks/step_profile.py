"""Where a training step's time goes, and what dynamic binarization costs.

    python benchmarks/step_profile.py --threads 1                      # anchor network, fp32, batch 128
    python benchmarks/step_profile.py --threads 1 --batch 1024
    python benchmarks/step_profile.py --threads 1 --preset mnist-fast  # bf16 autocast

Three measurements, in one process:

- profile: one epoch of ``vaelab.train`` (after a warm-up epoch) under torch.profiler; the
  share of the step's CPU time spent in matmuls (aten::mm, aten::addmm), the matmuls'
  achieved GFLOP/s (FLOPs counted with torch.utils.flop_counter on one step) and the
  heaviest other operators.
- GEMM: the machine's 2048x2048 matmul rate in fp32 and in bf16, measured now.
- binarization: torch.bernoulli(u / 255) against vaelab.transforms.bernoulli_u8 on the
  same 128 x 784 uint8 batch, alternating, median microseconds per batch.
- batch gather: ``images[idx]`` against ``images.index_select(0, idx)`` (what the trainer
  does) for ``--batch`` random rows of 54,000 uint8 28x28 images, alternating, median.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, data_dir, machine, matmul_flops, median, table  # noqa: E402
from train_throughput import MODELS  # noqa: E402

from vaelab.presets import load_preset  # noqa: E402
from vaelab.training.trainer import train  # noqa: E402
from vaelab.transforms import bernoulli_u8  # noqa: E402

MATMULS = ("aten::mm", "aten::addmm")


class ProfileSecondEpoch:
    """Trainer callback: runs the second epoch under torch.profiler, counts one step's FLOPs."""

    def __init__(self):
        self.averages, self.steps, self.flops = None, 0, 0.0

    def on_train_start(self, trainer):
        epoch = trainer._train_epoch

        def profiled():
            if trainer.epoch != 1:
                return epoch()
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                row = epoch()
            self.averages, self.steps = prof.key_averages(), trainer.steps_per_epoch
            return row

        trainer._train_epoch = profiled
        from torch.utils.flop_counter import FlopCounterMode

        x = trainer.data.transform(trainer.train_images[:trainer.config.train.batch_size].cpu())
        counter = FlopCounterMode(display=False)
        with counter, trainer._autocast():
            trainer.model.loss(x).loss.backward()
        trainer.model.zero_grad(set_to_none=True)
        self.flops = counter.get_total_flops()


def gather_us(batch: int, reps: int = 200) -> tuple[float, float]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (54000, 1, 28, 28), dtype=torch.uint8, generator=g)
    timings = {"index": [], "index_select": []}
    gathers = {"index": lambda idx: images[idx], "index_select": lambda idx: images.index_select(0, idx)}
    for _ in range(reps):
        idx = torch.randperm(len(images), generator=g)[:batch]
        for name, gather in gathers.items():
            start = time.perf_counter()
            gather(idx)
            timings[name].append(time.perf_counter() - start)
    return median(timings["index"]) * 1e6, median(timings["index_select"]) * 1e6


def binarization_us(reps: int = 200) -> tuple[float, float]:
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (128, 1, 28, 28), dtype=torch.uint8, generator=g)
    timings = {"torch": [], "vaelab": []}
    draws = {"torch": lambda: torch.bernoulli(u8.float().div_(255.0), generator=g),
             "vaelab": lambda: bernoulli_u8(u8, g)}
    for _ in range(reps):
        for name, draw in draws.items():
            start = time.perf_counter()
            draw()
            timings[name].append(time.perf_counter() - start)
    return median(timings["torch"]) * 1e6, median(timings["vaelab"]) * 1e6


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mlp-512", help=f"one of {', '.join(MODELS)} or a preset name")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--limit", type=int, default=12800, help="training images (the epoch profiled)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset, overrides = MODELS.get(args.preset, (args.preset, []))
    config = load_preset(preset)
    config.apply_overrides(overrides + [f"train.batch_size={args.batch}", "train.epochs=2", f"data.limit={args.limit}",
                                        "data.val_fraction=0", "train.early_stopping=none"])
    config.data.data_dir = data_dir(args.data_dir)
    if args.threads:
        config.train.threads = args.threads
    config.validate()
    print(machine())
    probe = ProfileSecondEpoch()
    with tempfile.TemporaryDirectory() as tmp:
        train(config, Path(tmp) / "run", progress=False, callbacks=[probe])
    total = sum(e.self_cpu_time_total for e in probe.averages) / 1e6
    matmul = sum(e.self_cpu_time_total for e in probe.averages if e.key in MATMULS) / 1e6
    gflops = probe.flops * probe.steps / matmul / 1e9
    fp32, bf16 = (matmul_flops(dtype=d)[1] / 1e9 for d in (torch.float32, torch.bfloat16))
    print(f"\n{args.preset}, batch {args.batch}, {probe.steps} steps profiled: {total / probe.steps * 1e3:.1f} ms a step; "
          f"matmuls {matmul / total:.0%} of it at {gflops:.0f} GFLOP/s")
    print(f"2048x2048 GEMM per CPU-second: fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.0f} GFLOP/s ({bf16 / fp32:.2f}x); "
          f"the step's matmuls at {gflops / fp32:.2f} of the fp32 rate")
    others = sorted((e for e in probe.averages if e.key not in MATMULS), key=lambda e: -e.self_cpu_time_total)[:8]
    print(table(["operator", "share of the step", "ms a step"],
                [[e.key, f"{e.self_cpu_time_total / 1e6 / total:.1%}", e.self_cpu_time_total / 1e3 / probe.steps]
                 for e in others]))
    plain, fast = binarization_us()
    print(f"\ndynamic binarization of a 128 x 784 batch, median: torch.bernoulli {plain:.0f} us, "
          f"vaelab bernoulli_u8 {fast:.0f} us ({plain / fast:.1f}x)")
    plain, fast = gather_us(args.batch)
    print(f"gathering {args.batch} rows of 54,000 uint8 images, median: images[idx] {plain:.0f} us, "
          f"index_select {fast:.0f} us ({plain / fast:.1f}x)")


if __name__ == "__main__":
    main()
