"""Latent probes: class-balanced labelled picks, classifiers on posterior means, `eval --probe-labels`."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from test_figures import run2d, tiny_run  # noqa: F401  (shared session fixtures)
from vaelab.cli import main
from vaelab.errors import VaelabError
from vaelab.probes import balanced_indices, probe_latents


def test_balanced_pick_is_equal_per_class_and_seeded():
    labels = np.repeat(np.arange(10), 50)
    pick = balanced_indices(labels, 100, seed=3)
    assert len(set(pick.tolist())) == 100
    assert Counter(labels[pick].tolist()) == {c: 10 for c in range(10)}
    assert np.array_equal(pick, balanced_indices(labels, 100, seed=3))
    assert not np.array_equal(pick, balanced_indices(labels, 100, seed=4))
    counts = Counter(labels[balanced_indices(labels, 25)].tolist())
    assert sum(counts.values()) == 25 and set(counts.values()) == {2, 3}


def test_balanced_pick_gives_a_small_class_all_it_has_and_skips_unlabelled():
    labels = np.array([0] * 2 + [1] * 40 + [2] * 40 + [-1] * 30)
    pick = balanced_indices(labels, 30)
    counts = Counter(labels[pick].tolist())
    assert counts[0] == 2 and counts[1] == 14 and counts[2] == 14 and -1 not in counts
    with pytest.raises(VaelabError, match="only 82 labelled images"):
        balanced_indices(labels, 83)
    with pytest.raises(VaelabError, match="at least 1"):
        balanced_indices(labels, 0)


class FakeRun:
    """Train/test images whose 'posterior means' are given directly: the probe sees only those."""

    def __init__(self, train_means, train_labels, test_means, test_labels):
        self.data = {"train": (train_means, train_labels), "test": (test_means, test_labels)}

    def images(self, split):
        means, labels = self.data[split]
        return means, torch.as_tensor(labels)

    def encode(self, means):
        return means, torch.ones_like(means)


def _fake(informative: bool, seed=0) -> FakeRun:
    rng = np.random.default_rng(seed)
    labels = {s: rng.integers(0, 10, size=n) for s, n in (("train", 1000), ("test", 500))}
    means = {}
    for split, y in labels.items():
        noise = rng.normal(size=(len(y), 10))
        means[split] = torch.as_tensor(np.eye(10)[y] * 5 + noise if informative else noise, dtype=torch.float32)
    return FakeRun(means["train"], labels["train"], means["test"], labels["test"])


def test_probe_errors_measure_what_the_code_knows_about_the_label():
    good = probe_latents(_fake(informative=True), 100)
    assert good["probe_labels"] == 100 and good["probe_test_images"] == 500 and good["probe_knn_k"] == 5
    assert good["probe_logreg_error"] < 0.02 and good["probe_knn_error"] < 0.02
    chance = probe_latents(_fake(informative=False), 100)
    assert 0.8 < chance["probe_logreg_error"] < 1.0 and 0.8 < chance["probe_knn_error"] < 1.0
    assert set(good) == {k for k in good if k.startswith("probe_")}


def test_probe_needs_two_classes():
    run = _fake(True)
    run.data["train"] = (run.data["train"][0], np.zeros(1000, dtype=int))
    with pytest.raises(VaelabError, match="one class only"):
        probe_latents(run, 20)


def test_probe_on_a_trained_run_uses_the_test_split(run2d):  # noqa: F811
    result = probe_latents(run2d, 50, seed=1)
    assert result["probe_labels"] == 50 and result["probe_test_images"] == 2000
    assert 0.0 <= result["probe_logreg_error"] <= 1.0 and 0.0 <= result["probe_knn_error"] <= 1.0
    assert result == probe_latents(run2d, 50, seed=1)


def test_eval_cli_merges_probe_results(tmp_path_factory, capsys):
    run_dir = tiny_run(tmp_path_factory, "2d")
    code = main(["eval", str(run_dir), "--probe-labels", "30", "--iw-samples", "0", "--limit", "50", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["probe_labels"] == 30 and 0 <= result["probe_logreg_error"] <= 1
    assert result["n_images"] == 50
    assert result["probe_test_images"] == 50  # --limit applies to the probes' test images too
    assert main(["eval", str(run_dir), "--probe-labels", "30", "--iw-samples", "0", "--limit", "50"]) == 0
    assert "% test error (logistic regression)" in capsys.readouterr().out
