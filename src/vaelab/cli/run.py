"""Commands on a finished run: `vaelab eval`, `sample`, `reconstruct`, and `demo` (train, then all three)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import VaelabError
from .options import add_data_dir, add_device, add_overwrite, add_quiet, add_seed, add_split, add_track, check_output


def _print_eval(result: dict) -> None:
    bpd = result.get("bits_per_dim")
    nll = result.get("nll_iw")
    print(f"{result['dataset']} {result['split']}, {result['n_images']} images (nats per image, over "
          f"{result['data_space']}):")
    print(f"  ELBO           {result['elbo']:.3f}   (reconstruction {result['recon']:.3f}, KL {result['kl']:.3f})")
    if nll is not None:  # a Bernoulli on grey levels is a cross-entropy, not a normalized likelihood
        label = "cross-entropy" if "cross-entropy" in result["data_space"] else "-log p(x)"
        print(f"  {label:<14} {nll:.3f}   (importance-weighted, K={result['iw_samples']})")
    print(f"  bits/dim       {bpd:.4f}   ({result['bits_per_dim_method']})" if bpd is not None else
          "  bits/dim       n/a (no pmf over 8-bit pixels: binarized data, PCA components or a continuous Bernoulli)")
    print(f"  active units   {result['active_units']}")
    if result.get("recon_mse"):
        from ..diagnostics import psnr

        print(f"  recon PSNR     {psnr(result['recon_mse']):.2f} dB   (image space; the mean image: "
              f"{psnr(result['mean_image_mse']):.2f} dB)")
    if "class_error" in result:  # a semi-supervised model's own classifier q(y|x)
        low, high = result["class_error_ci95"]
        print(f"  class error    {100 * result['class_error']:.2f} %   (q(y|x) on the {result['split']} labels; "
              f"95 % interval {100 * low:.2f}-{100 * high:.2f} %)")
    if "binarization" in result:
        print(f"  binarization   {result['binarization']}")
    if "probe_labels" in result:  # as the report says them: % test error of each classifier
        n = result["probe_labels"]
        print(f"  probes         {100 * result['probe_logreg_error']:.2f} % test error (logistic regression), "
              f"{100 * result['probe_knn_error']:.2f} % ({result['probe_knn_k']}-NN), on the posterior means of "
              f"{n} labelled training images")


def cmd_eval(args) -> int:
    from .report import check_eval_args
    from ..rundir.load import load_run

    check_eval_args(args)
    run = load_run(args.run_dir, device=args.device or "cpu", which=args.which, data_dir=args.data_dir)
    result = run.evaluate(split=args.split, iw_samples=args.iw_samples, limit=args.limit,
                          seed=args.seed, progress=not args.quiet)  # on stderr: --json output stays clean
    if args.probe_labels:
        from ..probes import probe_latents

        result.update(probe_latents(run, args.probe_labels, seed=args.seed, test_limit=args.limit))
    if args.track:
        from ..tracking import log_evaluation

        log_evaluation(run.path, run.config, result, settings={
            "command": "vaelab eval", "split": args.split, "iw_samples": args.iw_samples, "limit": args.limit,
            "seed": args.seed, "which": args.which, "probe_labels": args.probe_labels})
    if args.json:
        print(json.dumps(result))
    else:
        _print_eval(result)
    return 0


MAX_GRID = 10_000  # images in one PNG grid: already 100 x 100 of them


def _check_grid_size(n: int) -> None:
    if not 1 <= n <= MAX_GRID:
        raise VaelabError(f"-n must be from 1 to {MAX_GRID:,} (the images of one grid), got {n:,}")


def cmd_sample(args) -> int:
    from ..imagegrid import save_grid
    from ..rundir.load import load_run

    _check_grid_size(args.n)
    if args.fit_images is not None and not args.fitted_prior:
        raise VaelabError("--fit-images sets the images a fitted mixture is fitted on: give --fitted-prior K with it")
    fit_images = 10_000 if args.fit_images is None else args.fit_images
    if args.fitted_prior:
        from ..expost import check_fit_settings, sample_fitted

        check_fit_settings(args.fitted_prior, fit_images)
    check_output(args.out, args.overwrite)
    run = load_run(args.run_dir, device=args.device or "cpu")
    if args.fitted_prior:
        images = sample_fitted(run, args.n, seed=args.seed, components=args.fitted_prior, fit_images=fit_images)
        note = (f" (z from a {args.fitted_prior}-component Gaussian mixture fitted to the posterior means of "
                f"training images, not the model's prior)")
    else:
        images, note = run.sample(args.n, seed=args.seed), ""
    save_grid(images, args.out)
    print(f"wrote {args.out}{note}")
    return 0


def cmd_reconstruct(args) -> int:
    import torch

    from ..imagegrid import paired_rows, save_grid
    from ..rundir.load import load_run

    _check_grid_size(args.n)
    check_output(args.out, args.overwrite)
    run = load_run(args.run_dir, device=args.device or "cpu", data_dir=args.data_dir)
    images, _ = run.images(args.split)
    # spread over the split, not its first n: a folder read class by class would show one class
    images = images[torch.linspace(0, len(images) - 1, min(args.n, len(images))).round().long()]
    shown = run.transform.to_images(run.transform.fixed(images)).cpu()
    grid, width = paired_rows(shown, run.reconstruct(images, seed=args.seed))
    save_grid(grid, args.out, nrow=width)
    print(f"wrote {args.out} (odd rows: originals as the model sees them; even rows: reconstructions)")
    return 0


def cmd_demo(args) -> int:
    from ..imagegrid import paired_rows, save_grid
    from ..presets import load_preset
    from ..rundir.load import load_run
    from ..training.trainer import train

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        n = 2
        while Path(f"{out}-{n}").exists():
            n += 1
        out = Path(f"{out}-{n}")
    config = load_preset("demo")
    config.apply_overrides(args.set or [])
    if args.device:
        config.train.device = args.device
    config.validate()
    print(f"vaelab demo: training a VAE on the built-in MNIST sample into {out}")
    train(config, out, overwrite=args.overwrite, progress=not args.quiet)
    run = load_run(out)
    save_grid(run.sample(64, seed=0), out / "samples.png")
    images, _ = run.images("test")
    shown = run.transform.to_images(run.transform.fixed(images[:10])).cpu()
    grid, width = paired_rows(shown, run.reconstruct(images[:10]))
    save_grid(grid, out / "reconstructions.png", nrow=width)
    result = run.evaluate("test", iw_samples=args.iw_samples)
    _print_eval(result)
    print(f"wrote {out / 'samples.png'} and {out / 'reconstructions.png'}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a run: ELBO, IW log-likelihood, bits/dim, active units")
    p.add_argument("run_dir")
    add_split(p)
    p.add_argument("--iw-samples", type=int, default=100, metavar="K", help="importance samples per image (default 100)")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N images")
    p.add_argument("--which", default="final", choices=("final", "best", "last"), help="which weights")
    p.add_argument("--probe-labels", type=int, default=0, metavar="N",
                   help="fit classifiers on the posterior means of N labelled training images")
    add_seed(p)
    add_device(p)
    add_data_dir(p)
    add_track(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_quiet(p)
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("sample", help="a grid of samples from the prior")
    p.add_argument("run_dir")
    p.add_argument("-n", type=int, default=64)
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--fitted-prior", type=int, default=0, metavar="K",
                   help="draw z from a K-component full-covariance Gaussian mixture fitted to the posterior means of "
                        "training images (ex-post density estimation), not from the model's prior; 0: the prior")
    p.add_argument("--fit-images", type=int, default=None, metavar="N",
                   help="training images the mixture is fitted on (default 10,000, chosen with --seed)")
    add_seed(p)
    add_device(p)
    add_overwrite(p)
    p.set_defaults(func=cmd_sample)

    p = subparsers.add_parser("reconstruct", help="originals and their reconstructions")
    p.add_argument("run_dir")
    p.add_argument("-n", type=int, default=20, help="how many images, evenly spaced over the split (default 20)")
    add_split(p)
    p.add_argument("--out", required=True, help="PNG file to write")
    add_seed(p)
    add_device(p)
    add_data_dir(p)
    add_overwrite(p)
    p.set_defaults(func=cmd_reconstruct)

    p = subparsers.add_parser("demo", help="train a small VAE on the built-in sample (about a minute)")
    p.add_argument("--out", default="vaelab-demo")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--iw-samples", type=int, default=100)
    add_device(p, training=True)
    add_quiet(p, "no progress bar or log on the terminal")
    p.set_defaults(func=cmd_demo)
