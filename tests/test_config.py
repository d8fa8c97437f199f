import json

import pytest

from vaelab.config import Config, all_keys, describe_keys
from vaelab.errors import VaelabError
from vaelab.presets import load_preset, preset_info, preset_names


def test_set_parses_types_from_strings():
    c = Config()
    c.apply_overrides(["model.latent_dim=2", "train.lr=3e-4", "model.hidden=256,128",
                       "model.batch_norm=true", "data.image_size=none", "train.betas=[0.5,0.9]"])
    assert c.model.latent_dim == 2 and c.train.lr == 3e-4
    assert c.model.hidden == [256, 128] and c.model.batch_norm is True
    assert c.data.image_size is None and c.train.betas == [0.5, 0.9]


def test_unknown_key_suggests_the_closest():
    with pytest.raises(VaelabError, match="did you mean model.latent_dim"):
        Config().apply_overrides(["model.latent_dims=3"])
    with pytest.raises(VaelabError, match="did you mean train.batch_size"):
        Config().apply_overrides(["train.batchsize=3"])


@pytest.mark.parametrize("assignment,message", [
    ("model.latent_dim=0", "model.latent_dim must be at least 1"),
    ("train.lr=-0.1", "train.lr must be a positive number"),
    ("train.epochs=abc", "train.epochs expects int"),
    ("data.transform=binarise", "data.transform must be one of"),
    ("model.likelihood=poisson", "poisson"),
    ("model.sigma=0", "model.sigma must be a positive"),
    ("data.val_fraction=1.5", "data.val_fraction must be between"),
    # found by the run-directory fuzz: a floor past float32 made the first step raise
    ("train.free_bits=1e308", "train.free_bits must be at most"),
])
def test_bad_values_get_one_clear_line(assignment, message):
    c = Config()
    with pytest.raises(VaelabError, match=message) as info:
        c.apply_overrides([assignment])
        c.validate()
    assert "\n" not in str(info.value)


def test_config_file_round_trip(tmp_path):
    c = load_preset("mnist-mlp")
    c.set("model.latent_dim", 5)
    c.save(tmp_path / "c.json")
    again = Config.load(tmp_path / "c.json")
    assert again.to_dict() == c.to_dict()
    (tmp_path / "c.toml").write_text('[model]\nlatent_dim = 7\n[train]\nepochs = 2\n')
    assert Config.load(tmp_path / "c.toml").model.latent_dim == 7
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(VaelabError, match="not valid JSON"):
        Config.load(tmp_path / "bad.json")


def test_every_preset_validates_and_names_its_source():
    assert "mnist-mlp" in preset_names()
    for name in preset_names():
        info = preset_info(name)
        assert info["description"] and info["source"], name
        load_preset(name).validate()


def test_keys_listing_covers_the_contract():
    keys = all_keys()
    for key in ("data.name", "train.epochs", "train.batch_size", "train.lr", "model.latent_dim"):
        assert key in keys
    assert len(describe_keys()) == len(keys)
    json.dumps([d[2] for d in describe_keys()])  # defaults are plain JSON values
