"""README stays true: it lists every config key, and its Python example runs."""

import os
import re
from pathlib import Path

from vaelab.config import all_keys

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_lists_every_config_key():
    missing = [k for k in all_keys() if f"`{k}`" not in README]
    assert not missing, f"README's config table lacks {missing}"


def test_readme_python_example_runs(shared_data, tmp_path, monkeypatch):
    block = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    # the example's data folder: the real MNIST files, as a user would have after --download
    (tmp_path / "data").mkdir()
    os.symlink(shared_data / "mnist", tmp_path / "data" / "mnist")
    monkeypatch.chdir(tmp_path)
    block = block.replace('"train.epochs=5"', '"train.epochs=1", "data.limit=500"')
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["ds"].images.shape == (10000, 1, 28, 28)
    assert namespace["images"].shape == (16, 1, 28, 28)
    assert namespace["means"].shape == (100, 2)
