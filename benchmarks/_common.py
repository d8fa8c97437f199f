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
