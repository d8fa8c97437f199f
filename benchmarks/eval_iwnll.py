"""Importance-weighted NLL: vaelab's evaluator against pythae's get_nll, and memory.

    python benchmarks/eval_iwnll.py --run RUN_DIR                   # a trained MNIST run
    python benchmarks/eval_iwnll.py                                  # an untrained 512-512-32 MLP: speed only

1. Speed, interleaved: the same model and the same binarized test images, in chunks that
   alternate between the evaluators. vaelab: ``vaelab.evaluate.evaluate_model`` (what
   ``vaelab eval`` runs: ELBO, IW-NLL, active units), which encodes each image once and
   decodes K posterior samples in large chunks with a running log-sum-exp. Reference
   (--reference): pythae 0.1.2's ``VAE.get_nll`` itself where pythae is installed (see
   README.md for its venv), on a pythae VAE whose encoder and decoder are copies of the
   vaelab model (Bernoulli decoder: sigmoid probabilities, pythae's "bce"); otherwise, or
   with ``--reference reimpl``, its algorithm re-implemented here on the vaelab model. Both
   do the same: one image at a time, the image repeated batch_size times and re-encoded for
   every batch of samples, Bernoulli log-likelihood from sigmoid probabilities (BCE, whose
   log terms torch clamps at -100). get_nll is called under torch.no_grad() (it does not
   disable autograd itself; --pythae-autograd calls it as it is).
   Then a check on the first --check-images images: per-image log p(x) from each reference
   against vaelab's ``VAE.log_likelihood`` with the same K; the mean difference must be
   within Monte-Carlo noise (|z| < 3, z = mean / standard error of the per-image differences).
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


EVAL_BATCH = 500  # evaluate_model's batch_size here


def fixed_inputs(transform, images: torch.Tensor, seed: int, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """The model inputs evaluate_model evaluates: each image binarized from a hash of its own
    pixels (transforms.image_keyed_bernoulli), whatever the seed and batch size; the
    references get exactly these images."""
    return torch.cat([transform.fixed(images[start:start + batch_size])
                      for start in range(0, len(images), batch_size)])


def pythae_samples(k: int, batch_size: int) -> int:
    """The number of importance samples get_nll really uses for n_samples=k."""
    return batch_size if k <= batch_size else (k // batch_size) * batch_size


@torch.no_grad()
def pythae_style_log_p(model, x_all: torch.Tensor, k: int, batch_size: int = 100, seed: int = 0) -> list[float]:
    """pythae's get_nll algorithm re-implemented on a vaelab VAE: log p(x) per image, nats."""
    gen = torch.Generator().manual_seed(seed)
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
    return log_p


def pythae_style_nll(model, x_all: torch.Tensor, k: int, batch_size: int = 100, seed: int = 0) -> float:
    """The re-implementation's mean -log p(x), nats/image."""
    log_p = pythae_style_log_p(model, x_all, k, batch_size, seed)
    return -sum(log_p) / len(log_p)


def pythae_nll(pvae, x_all: torch.Tensor, k: int, batch_size: int, seed: int, autograd: bool = False) -> float:
    """The real pythae get_nll's mean -log p(x) (get_nll itself returns the mean log p(x))."""
    torch.manual_seed(seed)  # get_nll draws from the global RNG
    with torch.enable_grad() if autograd else torch.no_grad():
        return -float(pvae.get_nll(x_all, n_samples=k, batch_size=batch_size))


def load_model(run: str | None, data: str | None):
    """(model, transform, test images): a trained run, or an untrained 512-512-32 MLP VAE."""
    from vaelab.config import Config
    from vaelab.model import VAE
    from vaelab.prepared_data import eval_images
    from vaelab.transforms import make_transform

    if run:
        from vaelab.rundir.load import load_run

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


class Reference:
    """One reference evaluator: name, label and a function (x_all, seed) -> mean -log p(x)."""

    def __init__(self, key, label, nll, log_p_per_image):
        self.key, self.label, self.nll, self.log_p_per_image = key, label, nll, log_p_per_image
        self.seconds, self.total = 0.0, 0.0


def make_references(which: str, model, k: int, pythae_batch: int, autograd: bool) -> list[Reference]:
    import _pythae

    if which == "auto":
        which = "pythae" if _pythae.available() else "reimpl"
        if which == "reimpl":
            print("pythae is not installed: the reference is its get_nll algorithm re-implemented here "
                  "(see benchmarks/README.md for a venv with pythae)")
    if which in ("pythae", "both") and not _pythae.available():
        raise SystemExit("--reference pythae/both: pythae is not importable in this Python "
                         "(see benchmarks/README.md for a venv with pythae)")
    refs = []
    if which in ("pythae", "both"):
        pvae = _pythae.pythae_vae_from_vaelab(model)

        def real(x, seed):
            return pythae_nll(pvae, x, k, pythae_batch, seed, autograd)

        def real_per_image(x, seed):
            return [-pythae_nll(pvae, x[i:i + 1], k, pythae_batch, seed + i, autograd) for i in range(len(x))]

        grad = ", autograd on" if autograd else ""
        refs.append(Reference("pythae", f"pythae {_pythae.version()} get_nll (batch_size {pythae_batch}{grad})",
                              real, real_per_image))
    if which in ("reimpl", "both"):
        refs.append(Reference("pythae_style", f"pythae get_nll algorithm, re-implemented (batch {pythae_batch})",
                              lambda x, seed: pythae_style_nll(model, x, k, pythae_batch, seed),
                              lambda x, seed: pythae_style_log_p(model, x, k, pythae_batch, seed)))
    return refs


def speed(model, transform, images, k, chunk, refs: list[Reference]):
    ours = {"seconds": 0.0, "nll": 0.0}
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk]
        t = time.perf_counter()
        result = evaluate_model(model, transform, part, iw_samples=k, batch_size=EVAL_BATCH, seed=start)
        ours["seconds"] += time.perf_counter() - t
        ours["nll"] += result["nll_iw"] * len(part)
        x = fixed_inputs(transform, part, seed=start)  # the images evaluate_model just evaluated
        for ref in refs:
            t = time.perf_counter()
            nll = ref.nll(x, start)
            ref.seconds += time.perf_counter() - t
            ref.total += nll * len(part)
        print(f"  {start + len(part)}/{len(images)} images: vaelab {ours['seconds']:.1f} s, "
              + ", ".join(f"{ref.key} {ref.seconds:.1f} s" for ref in refs), flush=True)
    ours["nll"] /= len(images)
    return ours, {ref.key: {"seconds": ref.seconds, "nll": ref.total / len(images)} for ref in refs}


@torch.no_grad()
def agreement(model, transform, images, k, refs: list[Reference]) -> dict:
    """Per-image log p(x): each reference against vaelab's VAE.log_likelihood, same images and K."""
    x = fixed_inputs(transform, images, seed=0)
    gen = torch.Generator().manual_seed(12345)
    ours = torch.cat([model.log_likelihood(x[s:s + EVAL_BATCH], k, generator=gen)
                      for s in range(0, len(x), EVAL_BATCH)]).double()
    out = {}
    for ref in refs:
        theirs = torch.tensor(ref.log_p_per_image(x, 1000), dtype=torch.float64)
        d = theirs - ours
        se = float(d.std() / math.sqrt(len(d))) if len(d) > 1 else float("nan")
        mean = float(d.mean())
        out[ref.key] = {"images": len(d), "vaelab_nll": -float(ours.mean()), "reference_nll": -float(theirs.mean()),
                        "mean_difference": mean, "standard_error": se, "z": mean / se if se > 0 else float("nan"),
                        "max_abs_difference": float(d.abs().max())}
    return out


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
    parser.add_argument("--reference", choices=["auto", "pythae", "reimpl", "both"], default="auto",
                        help="pythae's own get_nll, the re-implementation, or both (auto: pythae where installed)")
    parser.add_argument("--pythae-autograd", action="store_true",
                        help="call get_nll with autograd on, as it runs when called bare (default: under no_grad)")
    parser.add_argument("--check-images", type=int, default=100,
                        help="images for the per-image agreement check (0: skip)")
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

    refs = make_references(args.reference, model, args.k, args.pythae_batch, args.pythae_autograd)
    for ref in refs:
        print(f"reference: {ref.label}", flush=True)
    k_eff = pythae_samples(args.k, args.pythae_batch)
    if k_eff != args.k:
        print(f"note: get_nll with n_samples={args.k}, batch_size={args.pythae_batch} uses {k_eff} samples")
    ours, theirs = speed(model, transform, images[:args.images], args.k, args.chunk, refs)
    results["speed"] = {"images": args.images, "k": args.k, "reference_samples": k_eff, "vaelab": ours, **theirs}
    print(f"\nIW-NLL, K={args.k}, first {args.images} test images, interleaved in chunks of {args.chunk}:")
    print(table(["evaluator", "seconds", "images/s", "-log p(x), nats", "speed-up of vaelab"],
                [["vaelab evaluate_model", ours["seconds"], args.images / ours["seconds"], f"{ours['nll']:.2f}", "-"]]
                + [[ref.label, theirs[ref.key]["seconds"], args.images / theirs[ref.key]["seconds"],
                    f"{theirs[ref.key]['nll']:.2f}", f"{theirs[ref.key]['seconds'] / ours['seconds']:.2f}x"] for ref in refs]))
    for ref in refs:
        print(f"speed-up against {ref.key}: {theirs[ref.key]['seconds'] / ours['seconds']:.2f}x")
    if {"pythae", "pythae_style"} <= theirs.keys():
        # get_nll seeded with torch.manual_seed(s) and the re-implementation's Generator(s)
        # draw the same noise: equal numbers mean the same computation
        gap = theirs["pythae"]["nll"] - theirs["pythae_style"]["nll"]
        results["speed"]["pythae_minus_reimpl_nll"] = gap
        print(f"pythae get_nll minus the re-implementation, same noise: {gap:+.2e} nats/image"
              + (" (identical)" if gap == 0 else ""))

    if args.check_images and refs:
        check = agreement(model, transform, images[:args.check_images], k_eff, refs)
        results["check"] = check
        print(f"\nagreement, per-image log p(x) on the first {args.check_images} test images, K={k_eff} "
              f"(reference minus vaelab VAE.log_likelihood):")
        rows = []
        for ref in refs:
            c = check[ref.key]
            verdict = "agree within Monte-Carlo noise" if abs(c["z"]) < 3 else "DISAGREE beyond Monte-Carlo noise"
            rows.append([ref.label, f"{c['vaelab_nll']:.2f}", f"{c['reference_nll']:.2f}",
                         f"{c['mean_difference']:+.3f}", f"{c['standard_error']:.3f}", f"{c['z']:+.2f}",
                         f"{c['max_abs_difference']:.2f}", verdict])
        print(table(["reference", "vaelab -log p", "reference -log p", "mean difference", "standard error", "z",
                     "max per-image |difference|", "verdict"], rows))

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
