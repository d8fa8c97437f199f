import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """../shared/data beside the checkout (or $VAELAB_SHARED_DATA), when present."""
    candidates = [os.environ.get("VAELAB_SHARED_DATA"), REPO.parent / "shared" / "data"]
    for c in candidates:
        if c and (Path(c) / "mnist").is_dir():
            return Path(c)
    return None


@pytest.fixture
def shared_data():
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is not present")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # never touch the user's cache folder from a test
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "vaelab-data"))


@pytest.fixture
def one_torch_thread():
    """Tiny models: one thread runs them several times faster than two on a busy 2-core
    machine (measured 12x under load), since no thread waits for another at every op."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def noisy_background(tmp_path_factory):
    """MNIST digits over uniform noise as an image folder, read as the returned data.name:
    scripts/grey_variants.py's `noisy-background`, built by the script itself."""
    import subprocess
    import sys

    shared = shared_data_dir()
    if shared is None:
        pytest.skip("../shared/data is not present")
    root = tmp_path_factory.mktemp("grey")
    subprocess.run([sys.executable, str(REPO / "scripts" / "grey_variants.py"), "--data-dir", str(shared),
                    "--out", str(root), "--only", "noisy-background"], check=True, capture_output=True)
    return f"folder:{root / 'noisy-background'}"
