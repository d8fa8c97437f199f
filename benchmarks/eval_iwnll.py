"""Importance-weighted NLL: vaelab's evaluator against pythae's get_nll algorithm, and memory.

    python benchmarks/eval_iwnll.py --run RUN_DIR                   # a trained MNIST run
    python benchmarks/eval_iwnll.py                                  # an untrained 512-512-32 MLP: speed only

1. Speed, interleaved: the same model and the same uint8 test images, in chunks that
   alternate between the two. vaelab: ``vaelab.evaluate.evaluate_model`` (what ``vaelab
   eval`` runs: ELBO, IW-NLL, active units), which encodes each image once and decodes K
   posterior samples in large chunks with a running log-sum-exp. Reference: pythae 0.1.2's
   ``VAE.get_nll`` algorithm, re-implemented here on the vaelab model (pythae is not
   installed): one image at a time, the image repeated batch_size times and re-encoded for
   every batch of samples, Bernoulli log-likelihood from sigmoid probabilities.
2. Memory: peak resident memory of a fresh process evaluating at K = 100, 1000, 5000
   (vaelab streams over samples, so it should not grow with K).
3. K = 5000: seconds for --k5000-images test images, and the projection to all 10,000.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, data_dir, machine, peak_rss_mb, table  # noqa: E402

from vaelab.evaluate import evaluate_model  # noqa: E402


@torch.no_grad()
def pythae_style_nll(model, transform, images: torch.Tensor, k: int, batch_size: int = 100, seed: int = 0) -> float:
    """pythae's get_nll algorithm on a vaelab VAE: returns the mean -log p(x), nats/image."""
    gen = torch.Generator().manual_seed(seed)
    x_all = transform.fixed(images, seed=seed)
    n_batches = 1 if k <= batch_size else k // batch_size
    log_p = []
    for i in range(len(x_all)):
        x = x_all[i].unsqueeze(0)
        log_w = []
        for _ in range(n_batches):
            x_rep = torch.cat(batch_size * [x])
            q = model.encode(x_rep)
            std = torch.exp(0.5 * q.logvar)
            z = q.mean + std * torch.randn(std.shape, generator=gen)
            log_q = -0.5 * (q.logvar + (z - q.mean) ** 2 / torch.exp(q.logvar)).sum(-1)
            log_pz = -0.5 * (z ** 2).sum(-1)
            recon = torch.sigmoid(model.decode(z)[:, 0])
            log_px = -F.binary_cross_entropy(recon.reshape(batch_size, -1), x_rep.reshape(batch_size, -1),
                                             reduction="none").sum(-1)
            log_w.append(log_px + log_pz - log_q)
        log_w = torch.cat(log_w)
        log_p.append(float(torch.logsumexp(log_w, 0) - math.log(len(log_w))))
    return -sum(log_p) / len(log_p)


def load_model(run: str | None, data: str | None):
    """(model, transform, test images): a trained run, or an untrained 512-512-32 MLP VAE."""
    from vaelab.config import Config
    from vaelab.model import VAE
    from vaelab.pipeline import eval_images
    from vaelab.transforms import make_transform

    if run:
        from vaelab.runs import load_run

        r = load_run(run)
        if data:
            r.config.data.data_dir = data
        images, _ = r.images("test")
        return r.model, r.transform, images, f"run {run}"
    config = Config()
    config.apply_overrides(["model.hidden=512,512", "model.latent_dim=32"])
    config.data.data_dir = data
    torch.manual_seed(0)
    model = VAE(config.model, (1, 28, 28)).eval()
    transform = make_transform(config.data.transform)
    images, _ = eval_images(config.data, "test", transform)
    return model, transform, images, "untrained 784-512-512-32 MLP (speed only)"


def speed(model, transform, images, k, chunk, pythae_batch):
    ours, theirs = {"seconds": 0.0, "nll": 0.0}, {"seconds": 0.0, "nll": 0.0}
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk]
        t = time.perf_counter()
        result = evaluate_model(model, transform, part, iw_samples=k, batch_size=500, seed=start)
        ours["seconds"] += time.perf_counter() - t
        ours["nll"] += result["nll_iw"] * len(part)
        t = time.perf_counter()
        nll = pythae_style_nll(model, transform, part, k, batch_size=pythae_batch, seed=start)
        theirs["seconds"] += time.perf_counter() - t
        theirs["nll"] += nll * len(part)
        print(f"  {start + len(part)}/{len(images)} images: vaelab {ours['seconds']:.1f} s, "
              f"pythae-style {theirs['seconds']:.1f} s", flush=True)
    for d in (ours, theirs):
        d["nll"] /= len(images)
    return ours, theirs


def memory_probe(args) -> None:
    """Child process: one evaluation at K, then this process's peak memory."""
    model, transform, images, _ = load_model(args.run, data_dir(args.data_dir))
    images = images[:args.probe_images]
    evaluate_model(model, transform, images[:10], iw_samples=2)  # warm up allocations
    before = peak_rss_mb()
    t = time.perf_counter()
    evaluate_model(model, transform, images, iw_samples=args.memory_probe, batch_size=500)
    print(json.dumps({"k": args.memory_probe, "seconds": time.perf_counter() - t,
                      "peak_mb": peak_rss_mb(), "before_mb": before}))


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained run directory (default: an untrained model)")
    parser.add_argument("--images", type=int, default=500, help="test images for the speed comparison")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=250, help="images per interleaved chunk")
    parser.add_argument("--pythae-batch", type=int, default=100, help="get_nll's batch_size (its default: 100)")
    parser.add_argument("--memory-ks", default="100,1000,5000")
    parser.add_argument("--probe-images", type=int, default=200)
    parser.add_argument("--k5000-images", type=int, default=500, help="0: skip the K=5000 timing")
    parser.add_argument("--memory-probe", type=int, help=argparse_hidden())
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        return memory_probe(args)
    print(machine())
    data = data_dir(args.data_dir)
    model, transform, images, what = load_model(args.run, data)
    print(f"model: {what}; {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    results = {"machine": machine(), "model": what}

    ours, theirs = speed(model, transform, images[:args.images], args.k, args.chunk, args.pythae_batch)
    results["speed"] = {"images": args.images, "k": args.k, "vaelab": ours, "pythae_style": theirs}
    print(f"\nIW-NLL, K={args.k}, first {args.images} test images, interleaved in chunks of {args.chunk}:")
    print(table(["evaluator", "seconds", "images/s", "-log p(x), nats"],
                [["vaelab evaluate_model", ours["seconds"], args.images / ours["seconds"], ours["nll"]],
                 [f"pythae get_nll algorithm (batch {args.pythae_batch})", theirs["seconds"],
                  args.images / theirs["seconds"], theirs["nll"]]]))
    print(f"speed-up: {theirs['seconds'] / ours['seconds']:.2f}x")

    rows = []
    for k in (int(v) for v in args.memory_ks.split(",") if v):
        cmd = [sys.executable, __file__, "--memory-probe", str(k), "--probe-images", str(args.probe_images)]
        cmd += (["--run", args.run] if args.run else []) + (["--data-dir", data] if data else [])
        cmd += ["--threads", str(args.threads)] if args.threads else []
        probe = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        rows.append([k, probe["before_mb"], probe["peak_mb"], probe["peak_mb"] - probe["before_mb"], probe["seconds"]])
    if rows:
        results["memory"] = rows
        print(f"\npeak resident memory of a fresh process evaluating {args.probe_images} images (MiB):")
        print(table(["K", "before evaluation", "peak", "added by evaluation", "seconds"], rows))

    if args.k5000_images:
        part = images[:args.k5000_images]
        t = time.perf_counter()
        result = evaluate_model(model, transform, part, iw_samples=5000, batch_size=500)
        seconds = time.perf_counter() - t
        projected = seconds * len(images) / len(part)
        results["k5000"] = {"images": len(part), "seconds": seconds, "projected_10k_seconds": projected,
                            "nll": result["nll_iw"]}
        print(f"\nK=5000: {seconds:.1f} s for {len(part)} test images (IW-NLL {result['nll_iw']:.2f}); "
              f"all {len(images)}: {projected:.0f} s projected (linear in images)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
