"""Helpers shared by the benchmarks: where the data are, the machine, timing, tables.

Every benchmark measures vaelab and its reference in the same process, interleaved, and
reports ratios: on a shared machine absolute seconds drift, ratios taken side by side do not.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def data_dir(given: str | None) -> str | None:
    """--data-dir, else $VAELAB_DATA, else ../shared/data beside the checkout (dev machines)."""
    if given:
        return given
    if os.environ.get("VAELAB_DATA"):
        return os.environ["VAELAB_DATA"]
    shared = REPO.parent / "shared" / "data"
    return str(shared) if (shared / "mnist").is_dir() else None


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-dir", help="datasets folder (default: $VAELAB_DATA or ../shared/data)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return parser


def machine() -> str:
    """One line naming the machine, the torch build and the date, for BENCHMARKS.md."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {gpu}; "
            f"torch {torch.__version__}, Python {platform.python_version()}; "
            f"{datetime.date.today().isoformat()}; load average {load:.2f} at start")


def report(result: dict, json_path: str | None) -> None:
    """Print a benchmark's result as JSON, and write it to ``json_path`` when given."""
    import json

    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Timer:
    def __init__(self, device="cpu"):
        self.device = device

    def __enter__(self):
        sync(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.seconds = time.perf_counter() - self.start
        return False


def matmul_flops(device="cpu", n: int = 2048, dtype=torch.float32, seconds: float = 0.4) -> tuple[float, float]:
    """The machine's measured matrix-multiply rate on n x n operands, right now.

    Returns (FLOP per wall second, FLOP per CPU second of this process), each the best of
    the repetitions: on a machine other jobs share, the CPU-time rate is the stable one.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    reps, best, best_cpu = 0, float("inf"), float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or reps < 2:
        cpu = time.process_time()
        with Timer(device) as t:
            a @ b
        best = min(best, t.seconds)
        best_cpu = min(best_cpu, max(time.process_time() - cpu, 1e-9))
        reps += 1
    return 2 * n ** 3 / best, 2 * n ** 3 / best_cpu


def table(header: list[str], rows: list[list]) -> str:
    """A GitHub-markdown table."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class MemorySampler:
    """Peak resident memory of this process by kind, from /proc/self/status (Linux).

    VmRSS (and its kernel-kept peak VmHWM, which ``peak_rss_mb`` reads too) counts the
    touched pages of a memory-mapped file (RssFile: file-backed, clean, dropped by the
    kernel under memory pressure; it also holds the mapped shared libraries, about 80
    MiB with torch) as well as anonymous memory (RssAnon: heap and tensors,
    what the process really needs). A thread samples RssAnon and RssFile every ``interval``
    seconds, so a peak shorter than that can be missed; VmHWM misses nothing.
    """

    FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")

    def __init__(self, interval: float = 0.05):
        import threading

        self.interval = interval
        self.peaks = dict.fromkeys(self.FIELDS, 0.0)
        self.start = self.read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @classmethod
    def read(cls) -> dict[str, float]:
        """The fields now, MiB (empty where /proc is absent)."""
        try:
            lines = Path("/proc/self/status").read_text().splitlines()
        except OSError:
            return {}
        values = {}
        for line in lines:
            key, _, rest = line.partition(":")
            if key in cls.FIELDS:
                values[key] = int(rest.split()[0]) / 1024  # kB
        return values

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._update()

    def _update(self) -> None:
        for key, value in self.read().items():
            self.peaks[key] = max(self.peaks[key], value)

    def __enter__(self) -> "MemorySampler":
        self._update()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        self._thread.join()
        self._update()
        return False

    def report(self) -> dict[str, float]:
        """Peaks and the starting anonymous memory (the interpreter and its imports), MiB."""
        return {"peak_rss_mb": self.peaks["VmHWM"], "peak_anon_mb": self.peaks["RssAnon"],
                "peak_file_mb": self.peaks["RssFile"], "anon_before_mb": self.start.get("RssAnon", float("nan"))}


def cifar_as_svhn(data: str | Path, n: int, chunk: int = 8192):
    """(images, labels) chunks of n 32x32 RGB images: SVHN's size from CIFAR-10's JPEGs.

    SVHN is not available here. The 50,000 CIFAR-10 training images come first, then their
    mirror images, then both rolled by one pixel right, down, left, up and diagonally
    (wrapping around), in that order, until n images are made: up to 600,000 distinct ones.
    """
    import numpy as np

    from vaelab.data import load_dataset

    cifar = load_dataset(f"folder:{Path(data) / 'cifar10' / 'train'}", "train")
    images, labels = cifar.images, cifar.labels
    shifts = [(0, 0), (0, 1), (1, 0), (0, -1), (-1, 0), (1, 1)]
    done = 0
    for dy, dx in shifts:
        for flip in (False, True):
            variant = images[:, :, :, ::-1] if flip else images
            if (dy, dx) != (0, 0):
                variant = np.roll(variant, (dy, dx), axis=(2, 3))
            for start in range(0, len(variant), chunk):
                take = min(chunk, len(variant) - start, n - done)
                if take <= 0:
                    return
                yield np.ascontiguousarray(variant[start:start + take]), labels[start:start + take]
                done += take
    if done < n:
        raise ValueError(f"cifar_as_svhn makes at most {done} images, {n} were asked for")
