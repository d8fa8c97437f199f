"""Loading each dataset from disk into a ready uint8 tensor (N, C, H, W): vaelab vs a plain reader.

    python benchmarks/data_loading.py
    python benchmarks/data_loading.py --datasets mnist,svhn --reps 5

Each row times ``torch.from_numpy(vaelab.load_dataset(name, split).images)`` against the
reader most people would write for that format, alternating the two --reps times in one
process (median reported):

- mnist (train, 60,000, gzip IDX): gzip.open + numpy.frombuffer.
- cifar-folder (50,000 JPEGs, folder:.../cifar10/train): a single-threaded Pillow loop.
- svhn (train_32x32.mat, format 2): scipy.io.loadmat + transpose. SVHN is not available
  here, so a format-2 file of SVHN train's size (73,257 images) is written once from the
  CIFAR-10 JPEGs (with flipped copies) and read by both.
- memmap (a uint8 .npy store, as pca_fit.py prepares for splits bigger than memory):
  np.load(mmap_mode="c") wrapped as a tensor, which reads nothing until pages are used,
  against np.load of the whole file into memory. The speed-up says what a lazy store
  saves at start-up, not a faster read.
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, data_dir, machine, median, table  # noqa: E402

import vaelab  # noqa: E402


def plain_idx(path: Path) -> torch.Tensor:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    return torch.from_numpy(np.frombuffer(raw, np.uint8, offset=16).reshape(n, 1, rows, cols).copy())


def plain_folder(root: Path) -> torch.Tensor:
    from PIL import Image

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    out = np.empty((len(files), 3, 32, 32), np.uint8)
    for i, path in enumerate(files):
        with Image.open(path) as im:
            out[i] = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
    return torch.from_numpy(out)


def plain_mat(path: Path) -> torch.Tensor:
    import scipy.io

    x = scipy.io.loadmat(path, variable_names=["X"])["X"]  # (32, 32, 3, N)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))


def write_svhn_like(folder: Path, cifar: np.ndarray, n: int = 73257) -> Path:
    """A format-2 train_32x32.mat of n images: CIFAR, then its mirror images."""
    import scipy.io

    path = folder / "svhn" / "train_32x32.mat"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    images = np.concatenate([cifar, cifar[:n - len(cifar), :, :, ::-1]])[:n]
    x = np.ascontiguousarray(images.transpose(2, 3, 1, 0))  # (32, 32, 3, N), as the official files
    y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)
    scipy.io.savemat(path, {"X": x, "y": y}, do_compression=False)
    return path


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def compare(name, ours, theirs, reps):
    t_ours, t_theirs, shape = [], [], None
    for _ in range(reps):
        s, a = timed(ours)
        t_ours.append(s)
        s, b = timed(theirs)
        t_theirs.append(s)
        assert a.shape == b.shape and a.dtype == torch.uint8, (a.shape, b.shape)
        shape = tuple(a.shape)
        del a, b
    mo, mt = median(t_ours), median(t_theirs)
    print(f"  {name}: vaelab {mo:.2f} s, plain {mt:.2f} s", flush=True)
    return [name, "x".join(map(str, shape)), mo, shape[0] / mo, mt, mt / mo]


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="mnist,cifar-folder,svhn,memmap")
    parser.add_argument("--reps", type=int, default=3, help="alternating repetitions (cifar-folder: 1)")
    parser.add_argument("--work-dir", default="/tmp/vaelab-bench", help="where the SVHN-like file is written")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine())
    data = Path(data_dir(args.data_dir))
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    wanted = args.datasets.split(",")
    rows, cifar = [], None
    if "mnist" in wanted:
        rows.append(compare("mnist train (IDX .gz)",
                            lambda: torch.from_numpy(vaelab.load_dataset("mnist", "train", data_dir=data).images),
                            lambda: plain_idx(data / "mnist" / "train-images-idx3-ubyte.gz"), args.reps))
    folder = data / "cifar10" / "train"
    if "cifar-folder" in wanted or "svhn" in wanted or "memmap" in wanted:
        cifar = vaelab.load_dataset(f"folder:{folder}", "train").images
    if "cifar-folder" in wanted:
        rows.append(compare("CIFAR-10 folder (50k JPEG)",
                            lambda: torch.from_numpy(vaelab.load_dataset(f"folder:{folder}", "train").images),
                            lambda: plain_folder(folder), 1))
    if "svhn" in wanted:
        mat = write_svhn_like(work, cifar)
        rows.append(compare("SVHN-format train_32x32.mat (73,257)",
                            lambda: torch.from_numpy(vaelab.load_dataset("svhn", "train", data_dir=work).images),
                            lambda: plain_mat(mat), args.reps))
    if "memmap" in wanted:
        store = work / "loading-store.npy"
        if not store.exists():
            np.save(store, cifar)
        rows.append(compare("uint8 .npy store (50k), memory-mapped: lazy",
                            lambda: torch.from_numpy(np.load(store, mmap_mode="c")),
                            lambda: torch.from_numpy(np.load(store)), args.reps))
    print("\nmedian seconds from files on disk to a uint8 tensor (N, C, H, W); the OS file cache is warm")
    print(table(["data", "shape", "vaelab s", "vaelab images/s", "plain reader s", "vaelab speed-up"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
