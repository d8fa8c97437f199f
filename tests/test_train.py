"""Training on real data, the run directory contract, resume, evaluation."""

import inspect
import json
import math
import sys

import pytest
import torch

import vaelab
from vaelab.config import Config
from vaelab.evaluate import bits_per_dim
from vaelab.errors import VaelabError
from vaelab.model import VAE
from vaelab.transforms import make_transform


def tiny_config(**overrides) -> Config:
    c = Config()
    c.apply_overrides(["data.name=mnist-sample", "data.limit=1000", "model.hidden=64",
                       "model.latent_dim=4", "train.epochs=2", "train.batch_size=100"])
    c.apply_overrides([f"{k}={v}" for k, v in overrides.items()])
    return c


@pytest.mark.slow
def test_two_epochs_on_real_mnist_lower_the_validation_loss(shared_data, tmp_path):
    c = Config()
    c.apply_overrides([f"data.data_dir={shared_data}", "data.name=mnist", "data.limit=12000",
                       "model.hidden=256", "model.latent_dim=10", "train.epochs=2", "train.batch_size=128"])
    out = vaelab.train(c, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    # binarized MNIST: an untrained decoder is at ~543 nats (784 ln 2); after two epochs far lower
    assert rows[1]["val_elbo"] > rows[0]["val_elbo"]
    assert -rows[1]["val_elbo"] < 200
    run = vaelab.load_run(out)
    result = run.evaluate("test", iw_samples=50, limit=500)
    assert result["nll_iw"] <= -result["elbo"] + 1.0  # IW bound is tighter than the ELBO
    assert result["nll_iw"] < 200 and result["active_units"] >= 1


def test_run_directory_contract(tmp_path):
    out = vaelab.train(tiny_config(), tmp_path / "run", progress=False)
    for name in ("config.json", "model.json", "model.safetensors", "metrics.jsonl", "train.log"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "best.safetensors").is_file()
    assert list((out / "checkpoints").glob("last-*.safetensors"))
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("epoch", "train_loss", "train_recon", "train_kl", "val_elbo", "images_per_s", "seconds"):
        assert isinstance(row[key], (int, float)), key
    assert math.isclose(row["train_loss"], row["train_recon"] + row["train_kl"], rel_tol=1e-4)
    description = json.loads((out / "model.json").read_text())
    assert description["event_shape"] == [1, 28, 28]
    assert Config.load(out / "config.json").model.latent_dim == 4


def test_resume_continues_the_same_run(tmp_path):
    out = vaelab.train(tiny_config(), tmp_path / "run", progress=False)
    c = Config.load(out / "config.json")
    c.set("train.epochs", 3)
    vaelab.train(c, out, resume=True, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    # an uninterrupted 3-epoch run ends with the very same weights
    straight = vaelab.train(tiny_config(**{"train.epochs": 3}), tmp_path / "straight", progress=False)
    a, b = vaelab.load_run(out), vaelab.load_run(straight)
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name


def test_existing_run_directory_is_never_overwritten(tmp_path):
    out = vaelab.train(tiny_config(**{"train.epochs": 1}), tmp_path / "run", progress=False)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(VaelabError, match="--overwrite"):
        vaelab.train(tiny_config(**{"train.epochs": 1}), out, progress=False)
    assert (out / "model.safetensors").read_bytes() == before
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(VaelabError, match="not a vaelab run directory"):
        vaelab.train(tiny_config(), other, overwrite=True, progress=False)
    assert (other / "keep.txt").read_text() == "mine"


def test_bad_config_writes_nothing(tmp_path):
    with pytest.raises(VaelabError, match="latent_dim"):
        vaelab.train(tiny_config(**{"model.latent_dim": 0}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_missing_dataset_files_name_the_folder(tmp_path):
    c = tiny_config(**{"data.name": "mnist", "data.data_dir": str(tmp_path / "empty")})
    with pytest.raises(VaelabError, match="empty") as info:
        vaelab.train(c, tmp_path / "run", progress=False)
    assert "train-images-idx3-ubyte" in str(info.value)


def test_bits_per_dim_units():
    torch.manual_seed(0)
    c = Config()
    c.apply_overrides(["model.likelihood=discretized-logistic", "model.hidden=8", "model.latent_dim=2"])
    vae = VAE(c.model, (3, 4, 4))
    scale = make_transform("scale")
    # a pmf over 8-bit values: nll / (D ln 2)
    assert math.isclose(bits_per_dim(100.0, vae, scale, (3, 4, 4)), 100.0 / (48 * math.log(2)))
    c.apply_overrides(["model.likelihood=gaussian"])
    gauss = VAE(c.model, (3, 4, 4))
    # a Gaussian is given its -log P(u) from the bin masses: the same units
    assert math.isclose(bits_per_dim(100.0, gauss, scale, (3, 4, 4)), 100.0 / (48 * math.log(2)))
    # a continuous Bernoulli has no bin mass here: no bits/dim rather than a point density
    c.apply_overrides(["model.likelihood=continuous-bernoulli"])
    assert bits_per_dim(100.0, VAE(c.model, (3, 4, 4)), scale, (3, 4, 4)) is None
    c.apply_overrides(["model.likelihood=bernoulli"])
    assert bits_per_dim(100.0, VAE(c.model, (1, 4, 4)), make_transform("binarize-dynamic"), (1, 4, 4)) is None


def test_static_binarization_is_fixed_and_dynamic_is_fresh(tmp_path):
    from vaelab.prepared_data import prepare_data

    c = tiny_config(**{"data.transform": "binarize-static"})
    data = prepare_data(c.data)
    assert set(torch.unique(data.train).tolist()) <= {0, 255}
    again = prepare_data(c.data)
    assert torch.equal(data.train, again.train)
    dyn = make_transform("binarize-dynamic")
    g = torch.Generator().manual_seed(0)
    images = prepare_data(tiny_config().data).train[:50]
    first, second = dyn(images, generator=g), dyn(images, generator=g)
    assert not torch.equal(first, second)
    assert set(torch.unique(first).tolist()) <= {0.0, 1.0}
    # pixel probability is u/255: the mean of many draws approaches it
    draws = torch.stack([dyn(images, generator=g) for _ in range(400)]).mean(0)
    assert (draws - images.float() / 255).abs().max() < 0.15


def test_resume_takes_a_new_learning_rate_and_records_it(tmp_path):
    out = vaelab.train(tiny_config(**{"train.epochs": 1}), tmp_path / "run", progress=False)
    c = Config.load(out / "config.json")
    c.apply_overrides(["train.epochs=2", "train.lr=1e-4"])
    vaelab.train(c, out, resume=True, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["lr"] == 1e-3 and rows[1]["lr"] == 1e-4
    saved = Config.load(out / "config.json")
    assert saved.train.lr == 1e-4 and saved.train.epochs == 2


def test_training_leaves_process_settings_as_it_found_them(tmp_path):
    threads = torch.get_num_threads()
    vaelab.train(tiny_config(**{"train.epochs": 1, "train.threads": 1}), tmp_path / "run", progress=False)
    assert torch.get_num_threads() == threads
    # subnormal floats survive again (flush-to-zero is on only while training)
    assert torch.tensor([1e-40], dtype=torch.float32).item() != 0.0


def test_data_limit_is_a_seeded_random_subset_across_classes():
    import numpy as np

    from vaelab.prepared_data import limit_images

    labels = np.repeat(np.arange(10), 100)  # sorted by class, as many folders are
    images = np.arange(1000, dtype=np.uint8).reshape(1000, 1, 1, 1)
    small_images, small_labels = limit_images(images, labels, 50)
    assert len(small_labels) == 50 and len(set(small_labels.tolist())) >= 8
    again, _ = limit_images(images, labels, 50)
    assert np.array_equal(small_images, again)
    assert limit_images(images, labels, 0)[1] is labels


def test_vaelab_train_is_the_api_function_and_the_package_of_its_modules():
    # `import a.b.c as x` looks up the attribute vaelab.train, so it must be the subpackage
    import vaelab.training.callbacks as cb
    import vaelab.training.trainer
    from vaelab.training import schedules

    assert cb.__name__ == "vaelab.training.callbacks" and schedules.__name__ == "vaelab.training.schedules"
    assert vaelab.training.trainer is sys.modules["vaelab.training.trainer"]
    # ... and calling it trains, with the documented signature
    assert callable(vaelab.train)
    assert list(inspect.signature(vaelab.train).parameters) == ["config", "out", "resume", "overwrite", "progress",
                                                              "callbacks"]


def test_fast_bernoulli_matches_u_over_255_for_every_level():
    from scipy.stats import chisquare

    from vaelab.transforms import bernoulli_u8

    levels = torch.arange(256, dtype=torch.uint8)
    # the exact probability of each level, from the sampler's construction
    exact = torch.tensor([-(-u * (1 << 21) // 255) / (1 << 21) for u in range(256)], dtype=torch.float64)
    assert (exact - levels.double() / 255).abs().max() < 5e-7
    g = torch.Generator().manual_seed(3)
    reps = 4000
    x = bernoulli_u8(levels.repeat(reps).view(reps, 1, 16, 16), generator=g)
    assert x.shape == (reps, 1, 16, 16) and x.dtype == torch.float32
    ones = x.view(reps, 256).sum(0).double()
    assert ones[0] == 0 and ones[255] == reps  # u = 0 and 255 are certain
    # every level at once: ones ~ Binomial(reps, u/255); a chi-square test on the 254 random levels
    p = levels[1:255].double() / 255
    observed = torch.stack([ones[1:255], reps - ones[1:255]])
    expected = torch.stack([reps * p, reps * (1 - p)])
    assert chisquare(observed.flatten().numpy(), expected.flatten().numpy(), ddof=0).pvalue > 1e-4
    # seeded: the same generator state gives the same draw; odd sizes are covered exactly
    odd = torch.full((7, 1, 1, 1), 128, dtype=torch.uint8)
    a = bernoulli_u8(odd, torch.Generator().manual_seed(5))
    assert torch.equal(a, bernoulli_u8(odd, torch.Generator().manual_seed(5))) and a.shape == odd.shape


def test_fast_bernoulli_is_the_int64_construction_bit_for_bit():
    """The int32 arithmetic cuts the same three 21-bit fields from each int64 draw as plain
    int64 shifts do: the same generator state gives the same binary images."""
    from vaelab.transforms import bernoulli_u8

    mask = (1 << 21) - 1
    for seed, shape in [(0, (64, 1, 28, 28)), (1, (5, 3, 7, 7)), (2, (1, 1, 1, 2)), (3, (3, 2, 5, 11))]:
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
        n = images.numel()
        words = torch.empty((n + 2) // 3, dtype=torch.int64).random_(generator=torch.Generator().manual_seed(seed))
        fields = torch.stack((words & mask, (words >> 21) & mask, words >> 42), 1).view(-1)[:n]
        expected = ((fields * 255 >> 21) < images.reshape(-1).long()).view(shape).float()
        assert torch.equal(bernoulli_u8(images, torch.Generator().manual_seed(seed)), expected)


def test_images_the_device_cannot_hold_stay_on_the_host(tmp_path, monkeypatch):
    """A GPU out of memory for the dataset: one warning, batches copied over, same training."""
    from vaelab.training import trainer

    reference = vaelab.train(tiny_config(**{"train.epochs": 1}), tmp_path / "ref", progress=False)
    move, resident, moving_whole_split = torch.Tensor.to, trainer._resident, [False]

    def no_room(self, *args, **kwargs):  # only while a whole split moves to the device
        if moving_whole_split[0]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return move(self, *args, **kwargs)

    def watched(*args, **kwargs):
        moving_whole_split[0] = True
        try:
            return resident(*args, **kwargs)
        finally:
            moving_whole_split[0] = False

    monkeypatch.setattr(torch.Tensor, "to", no_room)
    monkeypatch.setattr(trainer, "_resident", watched)
    out = vaelab.train(tiny_config(**{"train.epochs": 1}), tmp_path / "run", progress=False)
    log = (out / "train.log").read_text()
    assert log.count("do not fit in cpu memory") == 2  # train and validation images
    assert "stay in host memory" in log
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] == ref_rows[-1]["train_loss"] and rows[-1]["val_elbo"] == ref_rows[-1]["val_elbo"]


def test_static_binarization_draws_on_the_limited_subset():
    """The static draw is made on the data.limit subset (as before stores existed): it does
    not depend on the split's size and never touches the images left out."""
    from vaelab.prepared_data import SPLIT_SEED, load_images, limit_images, prepare_data, split_train_val
    from vaelab.transforms import StaticBinarize

    c = tiny_config(**{"data.transform": "binarize-static", "data.limit": 300})
    images, labels = limit_images(*load_images(c.data, "train"), 300)
    expected = StaticBinarize().prepare(images, seed=SPLIT_SEED)
    train_idx, val_idx = split_train_val(len(images), c.data.val_fraction)
    data = prepare_data(c.data)
    assert torch.equal(data.train, torch.from_numpy(expected[train_idx]))
    assert torch.equal(data.val, torch.from_numpy(expected[val_idx]))
    assert torch.equal(data.train_labels, torch.from_numpy(labels[train_idx]))
