"""How close to the GEMM rate an MLP's training step can get: its own matmuls alone.

    python benchmarks/matmul_ceiling.py --threads 1                     # preset mnist-mlp, batch 1024
    python benchmarks/matmul_ceiling.py --threads 1 --batch 128

For every nn.Linear of the preset's model, the three products of one training step (forward
addmm, the input's gradient, the weight's gradient; no input gradient for the first layer),
with the shapes and memory layouts autograd uses, run back to back on random tensors: their
FLOPs per CPU second, against the 2048x2048 fp32 GEMM's measured in between (rounds
alternate; medians). This is the ceiling of train_throughput.py's "fraction of GEMM rate":
a step does these products and more. It also times each forward product through oneDNN
(torch.ops.mkldnn._linear_pointwise) against torch's addmm (MKL on x86 builds).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, machine, median  # noqa: E402

from vaelab.families import build_model  # noqa: E402
from vaelab.presets import load_preset  # noqa: E402


def cpu_seconds(fn, reps: int) -> float:
    fn()
    start = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - start) / reps


def gemm_rate() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048 ** 3 / cpu_seconds(lambda: a @ b, 3)


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mnist-mlp")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_preset(args.preset)
    model = build_model(config.model, (1, 28, 28))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    b = args.batch
    cases = []  # (weight, input, output gradient, whether the input needs a gradient)
    for i, layer in enumerate(linears):
        w = layer.weight.detach()
        cases.append((w, layer.bias.detach(), torch.randn(b, w.shape[1]), torch.randn(b, w.shape[0]), i > 0))
    flops = sum(2 * b * w.shape[0] * w.shape[1] * (3 if grad_in else 2) for w, _, _, _, grad_in in cases)

    def step_products():
        for w, bias, x, g, grad_in in cases:
            torch.addmm(bias, x, w.t())
            g.t().mm(x)
            if grad_in:
                g.mm(w)

    packed = [torch.ops.mkldnn._reorder_linear_weight(w, b) for w, *_ in cases]
    forward_flops = sum(2 * b * w.shape[0] * w.shape[1] for w, *_ in cases)

    def forward_mkl():
        for w, bias, x, _, _ in cases:
            torch.addmm(bias, x, w.t())

    def forward_onednn():
        for p, (_, bias, x, _, _) in zip(packed, cases):
            torch.ops.mkldnn._linear_pointwise(x, p, bias, "none", [], "")

    rates = {"products": [], "gemm": [], "mkl": [], "onednn": []}
    for _ in range(args.rounds):
        rates["products"].append(flops / cpu_seconds(step_products, 10))
        rates["mkl"].append(forward_flops / cpu_seconds(forward_mkl, 10))
        rates["onednn"].append(forward_flops / cpu_seconds(forward_onednn, 10))
        rates["gemm"].append(gemm_rate())
    m = {k: median(v) / 1e9 for k, v in rates.items()}
    print(machine())
    print(f"{args.preset}, batch {b}: {len(linears)} linear layers, {flops / b / 1e6:.2f} MFLOP/image in matmuls")
    print(f"GFLOP per CPU-second, medians of {args.rounds} rounds: the step's matmuls alone {m['products']:.1f}, "
          f"2048x2048 GEMM {m['gemm']:.1f}: ceiling {m['products'] / m['gemm']:.2f} of the GEMM rate")
    print(f"forward products: torch.addmm {m['mkl']:.1f}, oneDNN linear {m['onednn']:.1f} "
          f"({m['onednn'] / m['mkl']:.2f}x)")


if __name__ == "__main__":
    main()
