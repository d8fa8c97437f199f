"""The tally of hostile inputs for docs/faults.md: each test says what every input it tried
ended as, and scripts/fault_table.py adds them up (lines of VAELAB_FAULT_REPORT)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

#: ok: accepted and worked; clean: one `vaelab: error:` line, exit 2; the rest are defects
OUTCOMES = ("ok", "clean", "traceback", "crash", "hang")
SRC = str(Path(__file__).resolve().parents[1] / "src")


def record(case: str, lost_bytes: int = 0, **counts: int) -> None:
    """Add ``counts`` (outcome -> how many inputs) for ``case`` to the report, when one is kept."""
    assert set(counts) <= set(OUTCOMES), counts
    if os.environ.get("VAELAB_FAULT_REPORT"):
        with open(os.environ["VAELAB_FAULT_REPORT"], "a") as f:
            f.write(json.dumps({"hostile": {"case": case, "lost_bytes": lost_bytes, **counts}}) + "\n")


def run_cli(case: str, argv: list[str], timeout: float = 120, **kwargs) -> tuple[str, subprocess.CompletedProcess | None]:
    """Run `python -m vaelab ARGV` in a subprocess; classify and record how it ended."""
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", **kwargs.pop("env", {}))
    try:
        proc = subprocess.run([sys.executable, "-m", "vaelab", *argv], capture_output=True, text=True,
                              timeout=timeout, env=env, **kwargs)
    except subprocess.TimeoutExpired:
        record(case, hang=1)
        return "hang", None
    err = proc.stderr
    if proc.returncode < 0:
        outcome = "crash"
    elif "Traceback" in err:
        outcome = "traceback"
    elif proc.returncode == 0:
        outcome = "ok"
    elif proc.returncode == 2 and err.startswith("vaelab: error: ") and err.count("\n") == 1:
        outcome = "clean"
    else:
        outcome = "traceback"
    record(case, **{outcome: 1})
    return outcome, proc
