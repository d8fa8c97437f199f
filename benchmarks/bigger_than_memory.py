"""Data bigger than memory: SVHN extra's size (531,131 x 3 x 32 x 32) from a memory-mapped store.

    python benchmarks/bigger_than_memory.py --threads 1 --set train.autocast=bf16

SVHN is not available here, so the store holds the 50,000 CIFAR-10 training JPEGs, their
mirror images and one-pixel shifts of both (benchmarks/_common.cifar_as_svhn), 531,131
images, 1.6 GB. It is written once, with vaelab's own store writer, where `vaelab data
prepare svhn --split extra` would put it (WORK/data/svhn/store-extra), and reused after.
Then, each in a fresh process:

- pca: vaelab.pca.fit_pca over all 531,131 images of the memory map, 1000 components
  (data.pca_fit_images=0: a chunk at a time, in file order).
- train: `vaelab.train` of the svhn-pca preset with data.store=memmap, data.train_split=extra,
  data.pca_fit_images=0 (the PCA fitted on all 504,574 training images) and any --set:
  one epoch cut to --steps batches of 1000, then validation on all 26,557 held-out images,
  and the final checkpoint. The cut is the only change to the trainer: steps_per_epoch is
  lowered after setup (a whole epoch is about 12 minutes in bf16 on two cores).
- pca-in-memory (with --reference): the same fit with the split loaded into memory
  (np.load), what a run without the store would hold.

Memory, per process (see _common.MemorySampler): peak RSS is the kernel's VmHWM, which
counts the touched pages of the memory map (file-backed, reclaimable: the kernel drops
them under pressure instead of running out of memory); peak anonymous memory (RssAnon,
sampled every 50 ms) is what the process itself needs, heap and tensors.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MemorySampler, base_parser, cifar_as_svhn, data_dir, machine, table  # noqa: E402

SVHN_EXTRA = 531131
PHASES = ("pca", "train")


def build_store(work: Path, n: int, data: str) -> Path:
    """The store of n CIFAR-derived images as svhn/extra under WORK/data, written once."""
    from vaelab.data.store import read_store, store_dir, write_store
    from vaelab.errors import VaelabError

    folder = store_dir("svhn", "extra", work / "data")
    try:
        if read_store(folder)[0].shape[0] == n:
            return folder
    except VaelabError:
        pass
    need = n * 3 * 32 * 32
    free = shutil.disk_usage(work).free
    print(f"writing the store: {need / 2**30:.2f} GiB into {folder} ({free / 2**30:.0f} GiB free)", flush=True)
    write_store(folder, (n, 3, 32, 32), cifar_as_svhn(data, n),
                {"dataset": "svhn", "split": "extra", "image_size": None, "channels": None,
                 "note": "CIFAR-10 training JPEGs, mirrored and shifted (benchmarks/bigger_than_memory.py)"})
    return folder


def _limit_threads(threads: int):
    import torch
    from threadpoolctl import threadpool_limits

    if threads:
        torch.set_num_threads(threads)
    return threadpool_limits(limits=torch.get_num_threads())


def run_pca(work: Path, components: int, threads: int, in_memory: bool) -> dict:
    from vaelab.data.store import open_store
    from vaelab.pca import fit_pca

    with _limit_threads(threads), MemorySampler() as memory:
        start = time.perf_counter()
        images, _ = open_store("svhn", "extra", work / "data")
        if in_memory:
            images = np.array(images)  # the whole split read into memory
        pca = fit_pca(images, components, fit_images=0)
        seconds = time.perf_counter() - start
    return {"images": len(images), "seconds": seconds,
            "explained_variance": float(pca.explained_variance_ratio.sum()), **memory.report()}


def run_train(work: Path, steps: int, overrides: list[str], threads: int) -> dict:
    from vaelab.presets import load_preset
    from vaelab.training import trainer as trainer_module

    config = load_preset("svhn-pca")
    config.apply_overrides([f"data.data_dir={work / 'data'}", "data.store=memmap", "data.train_split=extra",
                            "data.pca_fit_images=0", "train.epochs=1", "train.device=cpu"] + overrides)
    if threads:
        config.train.threads = threads
    config.validate()
    times = {}
    setup = trainer_module.Trainer._setup

    def short_setup(self, transform=None):  # the benchmark's one change: a shorter epoch
        setup(self, transform)
        self.steps_per_epoch = min(self.steps_per_epoch, steps)
        times["setup"] = time.perf_counter()

    trainer_module.Trainer._setup = short_setup
    out = work / "run"
    with _limit_threads(threads), MemorySampler() as memory:
        start = time.perf_counter()
        trainer_module.train(config, out, overwrite=True, progress=False)
        seconds = time.perf_counter() - start
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    log = (out / "train.log").read_text()
    shutil.rmtree(out)
    return {"images": steps * config.train.batch_size, "seconds": seconds, "setup_seconds": times["setup"] - start,
            "images_per_s": row["images_per_s"], "train_loss": row["train_loss"], "val_elbo": row["val_elbo"],
            "pca_line": next((line for line in log.splitlines() if "PCA:" in line), ""),
            "settings": " ".join(overrides), **memory.report()}


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=SVHN_EXTRA)
    parser.add_argument("--components", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20, help="training batches (of 1000) before the epoch ends")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training overrides")
    parser.add_argument("--reference", action="store_true", help="also fit the PCA with the split in memory")
    parser.add_argument("--work-dir", default="/tmp/vaelab-bench/bigger", help="where the store (and run) go")
    parser.add_argument("--child", help="run one phase (internal)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    if args.child:
        if args.child == "train":
            result = run_train(work, args.steps, args.set, args.threads)
        else:
            result = run_pca(work, args.components, args.threads, in_memory=args.child == "pca-in-memory")
        print(json.dumps(result))
        return
    print(machine())
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    store = build_store(work, args.images, data_dir(args.data_dir))
    size = (store / "images.npy").stat().st_size
    print(f"store {store}: {args.images:,} x 3 x 32 x 32 uint8 ({size / 2**20:,.0f} MiB), ready in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    rows, results = [], {}
    for phase in PHASES + (("pca-in-memory",) if args.reference else ()):
        cmd = [sys.executable, __file__, "--child", phase, "--work-dir", str(work), "--components",
               str(args.components), "--steps", str(args.steps), "--threads", str(args.threads)]
        cmd += [f"--set={s}" for s in args.set]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"  {phase}: failed: {done.stderr.strip()[-2000:]}")
            continue
        r = results[phase] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {phase}: {r['seconds']:.0f} s, peak RSS {r['peak_rss_mb']:,.0f} MiB, "
              f"peak anonymous {r['peak_anon_mb']:,.0f} MiB", flush=True)
        what = {"pca": f"fit_pca, {args.components} components, all images, from the memory map",
                "pca-in-memory": "the same fit, the split loaded into memory (reference)",
                "train": f"svhn-pca {' '.join(args.set)}: PCA on the training rows, {args.steps} steps of 1000, "
                         f"validation"}[phase]
        rows.append([what, f"{r['images']:,}", r["seconds"], r["peak_rss_mb"], r["peak_anon_mb"],
                     r["peak_file_mb"], r["anon_before_mb"]])
    if "train" in results:
        r = results["train"]
        print(f"\ntrain: setup (open the store, fit the PCA on all training rows) {r['setup_seconds']:.0f} s, "
              f"{r['images_per_s']:.0f} training images/s; {r['pca_line']}")
    size_note = ": SVHN extra's size" if args.images == SVHN_EXTRA else ""
    print(f"\n{args.images:,} images (CIFAR-10 JPEGs, mirrored and shifted{size_note}) in a "
          f"{size / 2**20:,.0f} MiB memory-mapped store; each phase a fresh process; load average "
          f"{os.getloadavg()[0]:.2f} at the end:")
    print(table(["phase", "images", "seconds", "peak RSS MiB (VmHWM, incl. mapped file pages)",
                 "peak anonymous MiB (RssAnon)", "peak file-backed MiB (RssFile)", "anonymous at start MiB"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "store_bytes": size, "results": results},
                                              indent=2))


if __name__ == "__main__":
    main()
