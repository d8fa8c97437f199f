"""PCA of SVHN-sized colour data to 1000 components: seconds and peak memory per method.

    python benchmarks/pca_fit.py                      # 73,257 x 3072 (SVHN train's size)
    python benchmarks/pca_fit.py --methods sklearn-incremental --max-chunks 8   # the fit vaelab replaced

SVHN is not available here, so the data are the CIFAR-10 training JPEGs (50,000 real 32x32
RGB images), topped up to the requested count with horizontally flipped copies (flip of
image i, i = 0, 1, ...; then shifted copies: _common.cifar_as_svhn).

The images are written once to a memory-mapped uint8 store (a .npy file, N x 3 x 32 x 32,
prepared on the first run and reused), the way a split bigger than memory (SVHN extra,
531,131 images, 1.6 GB) is kept. Each method then runs in a fresh process that opens the
store read-only, so its peak resident memory is its own:

- vaelab-exact: vaelab.pca.fit_pca(fit_images=0): every image, the covariance summed over
  1024-image chunks read in order from the memory map, then eigendecomposed; memory stays
  at one chunk plus a D x D matrix whatever N.
- vaelab-subset: vaelab.pca.fit_pca with data.pca_fit_images=10000 (the presets' default).
- sklearn-exact: PCA(svd_solver="covariance_eigh") on all images as float32 in memory
  (vaelab's exact fit before the streamed one).
- sklearn-randomized: the reference, PCA(1000, svd_solver="randomized") on all images as
  float32, what scikit-learn picks ("auto") for this shape.
- sklearn-incremental (not run by default): IncrementalPCA over 4096-image chunks of the
  memory map, vaelab's data.pca_fit_images=0 before the streamed exact fit.

Peak RSS (VmHWM) counts the touched pages of the memory map; peak anonymous memory
(RssAnon, sampled) is the process's own (see _common.MemorySampler).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MemorySampler, base_parser, cifar_as_svhn, data_dir, machine, peak_rss_mb, table  # noqa: E402

METHODS = ("vaelab-exact", "vaelab-subset", "sklearn-exact", "sklearn-randomized")


def prepare_store(path: Path, n: int, data: str | None) -> Path:
    """Write n CIFAR-derived images to a uint8 .npy memory map once; later runs reuse it."""
    if path.exists():
        store = np.load(path, mmap_mode="r")
        if store.shape[0] == n:
            return path
    tmp = path.with_suffix(".tmp.npy")
    store = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, 32, 32))
    done = 0
    for images, _ in cifar_as_svhn(data, n):
        store[done:done + len(images)] = images
        done += len(images)
    store.flush()
    del store
    tmp.rename(path)
    return path


def run_method(method: str, store: Path, components: int, max_chunks: int, threads: int) -> dict:
    """Child process: one fit, its seconds, its peak memory and what it explains."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    images = np.load(store, mmap_mode="r")
    before = peak_rss_mb()
    with MemorySampler() as memory:
        start = time.perf_counter()
        if method.startswith("vaelab"):
            from vaelab.pca import fit_pca

            fitted = len(images) if method == "vaelab-exact" else min(10000, len(images))
            pca = fit_pca(images, components, fit_images=0 if method == "vaelab-exact" else fitted)
            explained = float(pca.explained_variance_ratio.sum())
        elif method == "sklearn-incremental":
            from sklearn.decomposition import IncrementalPCA

            if max_chunks:
                images = images[:max_chunks * 4096]  # a timed prefix; memory does not depend on N
            pca = IncrementalPCA(n_components=components)
            for start_row in range(0, len(images) - 4096 + 1, 4096):
                pca.partial_fit(images[start_row:start_row + 4096].reshape(4096, -1).astype(np.float32) / 255)
            explained = float(pca.explained_variance_ratio_.sum())
        else:
            from sklearn.decomposition import PCA

            flat = images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)
            solver = "covariance_eigh" if method == "sklearn-exact" else "randomized"
            pca = PCA(n_components=components, svd_solver=solver, random_state=0).fit(flat)
            explained = float(pca.explained_variance_ratio_.sum())
        seconds = time.perf_counter() - start
    return {"method": method, "images": fitted if method == "vaelab-subset" else len(images), "seconds": seconds,
            "peak_mb": peak_rss_mb(), "before_mb": before, "explained_variance": explained, **memory.report()}


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=73257, help="SVHN train: 73,257; extra: 531,131")
    parser.add_argument("--components", type=int, default=1000)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--max-chunks", type=int, default=0,
                        help="sklearn-incremental: time only the first N chunks of 4096 (0: all)")
    parser.add_argument("--store-dir", default="/tmp/vaelab-bench", help="where the uint8 store is kept")
    parser.add_argument("--child", help="run one method (internal)")
    parser.add_argument("--store", help="(internal)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_method(args.child, Path(args.store), args.components, args.max_chunks, args.threads)))
        return
    print(machine())
    data = data_dir(args.data_dir)
    folder = Path(args.store_dir)
    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    store = prepare_store(folder / f"cifar-as-svhn-{args.images}.npy", args.images, data)
    print(f"store {store}: {args.images} x 3 x 32 x 32 uint8 ({store.stat().st_size / 2**20:.0f} MiB), "
          f"ready in {time.perf_counter() - t:.1f} s", flush=True)
    rows, results = [], []
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--child", method, "--store", str(store),
               "--components", str(args.components), "--max-chunks", str(args.max_chunks)]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"  {method}: failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"  {method}: {r['seconds']:.1f} s, peak {r['peak_mb']:.0f} MiB", flush=True)
        rows.append([method, r["images"], r["seconds"], r["peak_mb"], r["peak_mb"] - r["before_mb"],
                     r["peak_anon_mb"], r["explained_variance"]])
    print(f"\nPCA to {args.components} components of {args.images} x 3072 (CIFAR-10 JPEGs + flips), "
          f"each method in a fresh process:")
    print(table(["method", "images fitted", "seconds", "peak RSS MiB", "added by the fit MiB",
                 "peak anonymous MiB", "explained variance"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
