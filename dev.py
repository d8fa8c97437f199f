#!/usr/bin/env python3
"""Set up a virtual environment for vaelab and run a job in it; needs only Python 3.10+.

    python3 dev.py demo    # set up, then train the demo on the built-in data
    python3 dev.py test    # set up, then run the test suite
    python3 dev.py setup   # set up only; afterwards use .venv/bin/vaelab

PyTorch comes first, as a CPU build where one is at hand: a local CPU wheel (pip's
configured find-links), else PyTorch's CPU index, else the default from PyPI. An
environment that already imports torch keeps it. VAELAB_TORCH_INDEX names another index
(e.g. a CUDA one).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("VAELAB_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".vaelab-installed"


def pip(*args: str, check: bool = True) -> bool:
    cmd = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "-q", *args]
    return subprocess.run(cmd, check=check).returncode == 0


def has_torch() -> bool:
    return subprocess.run([str(PYTHON), "-c", "import torch"], capture_output=True).returncode == 0


def install_torch() -> None:
    if has_torch():
        return
    index = os.environ.get("VAELAB_TORCH_INDEX")
    if index:
        pip("install", "torch", "--index-url", index)
        return
    # 1. a CPU wheel pip already knows locally (find-links); fails fast elsewhere
    if pip("install", "--no-index", "--no-deps", "torch", check=False):
        pip("install", "torch")  # its dependencies, from the normal index
        return
    # 2. PyTorch's CPU-only index (Linux, Windows); macOS wheels on PyPI are CPU builds
    if sys.platform != "darwin" and pip("install", "--timeout", "30", "--retries", "1", "torch",
                                        "--index-url", "https://download.pytorch.org/whl/cpu",
                                        "--extra-index-url", "https://pypi.org/simple", check=False):
        return
    pip("install", "torch")


def setup() -> None:
    if not PYTHON.exists():
        print(f"dev.py: creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and has_torch():
        return
    print("dev.py: installing PyTorch (CPU build where available) and vaelab", flush=True)
    install_torch()
    pip("install", "-e", f"{ROOT}[test]")
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    job = argv[0] if argv else "setup"
    if job not in ("setup", "demo", "test"):
        print(__doc__)
        return 2
    setup()
    if job == "demo":
        return subprocess.call([str(BIN / "vaelab"), "demo", *argv[1:]])
    if job == "test":
        return subprocess.call([str(PYTHON), "-m", "pytest", *argv[1:]], cwd=ROOT)
    print(f"ready: {BIN / 'vaelab'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
