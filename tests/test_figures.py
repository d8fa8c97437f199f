"""Figures, training-time outputs (progress grids, GIF, TensorBoard) and the diagnostics.

The tiny runs trained here (built-in mnist-sample, 600 images, 2 epochs) are shared with
test_report.py, test_probes.py and test_browser.py through ``tiny_run``.
"""

from __future__ import annotations

import importlib.util
import io
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab import figures
from vaelab.cli import main
from vaelab.config import Config, TrainConfig
from vaelab.diagnostics import (collapse_warmup, collapse_warning, decoder_z_sensitivity, diagnose_model,
                                diagnose_training, instability_episodes, latent_activity)
from vaelab.errors import VaelabError
from vaelab.imagegrid import make_grid
from vaelab.images import decode_images
from vaelab.rundir.progress import PROGRESS_DIR, PROGRESS_GIF, progress_frames, write_progress_gif
from vaelab.model import VAE
from vaelab.rundir.load import Run, load_run
from vaelab.training import callbacks as cb
from vaelab.training.trainer import Trainer, default_callbacks

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None

# name -> config overrides; "2d" and "2d-plain" differ only in their training-time outputs
TINY_RUNS = {
    "2d": {"model.latent_dim": 2, "train.sample_every": 1, "train.tensorboard": HAS_TENSORBOARD},
    "2d-plain": {"model.latent_dim": 2},
    "4d": {"model.latent_dim": 4},
}
_made: dict[str, Path] = {}


def tiny_config(**overrides) -> Config:
    config = Config()
    config.data.name = "mnist-sample"
    config.data.limit = 600
    config.model.hidden = [64]
    config.train.epochs = 2
    config.train.batch_size = 100
    config.train.device = "cpu"
    for key, value in overrides.items():
        config.set(key, value)
    return config.validate()


def tiny_run(tmp_path_factory, name: str) -> Path:
    """A run directory trained once per test session (shared by the test modules)."""
    if name not in _made:
        out = tmp_path_factory.mktemp("runs") / name
        config = tiny_config(**TINY_RUNS[name])
        Trainer(config, out, progress=False, log=io.StringIO(), callbacks=default_callbacks(config)).run()
        _made[name] = out
    return _made[name]


@pytest.fixture(scope="session")
def run2d(tmp_path_factory):
    return load_run(tiny_run(tmp_path_factory, "2d"))


@pytest.fixture(scope="session")
def run4d(tmp_path_factory):
    return load_run(tiny_run(tmp_path_factory, "4d"))


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


# -- the figures of a run ----------------------------------------------------------------------

def test_figures_cli_writes_every_figure(run4d, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["figures", str(run4d.path), "--out", str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{name}.png" for name in figures.FIGURES)
    for path in out.iterdir():
        width, height = png_size(path)
        assert width > 200 and height > 100
    assert capsys.readouterr().out.count("wrote ") == len(figures.FIGURES)


def test_figures_cli_rejects_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["figures", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a vaelab run directory" in capsys.readouterr().err


def test_latents_match_the_model_posterior_and_eval_active_units(run4d):
    lat = figures.encode_latents(run4d)
    assert lat.split == "test" and lat.means.shape == (2000, 4)
    images, labels = run4d.images("test")
    with torch.no_grad():
        q = run4d.model.encode(run4d.transform.fixed(images[:1000]))
    np.testing.assert_allclose(lat.means[:1000], q.mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(lat.kl_per_dim, lat_kl_reference(lat), rtol=1e-6)
    evaluated = run4d.evaluate("test", iw_samples=0)
    assert int(lat.active.sum()) == evaluated["active_units"]
    assert (lat.labels == labels.numpy()).all()


def lat_kl_reference(lat) -> np.ndarray:
    p = torch.distributions.Normal(torch.from_numpy(lat.means).double(), torch.from_numpy(lat.stds).double())
    return torch.distributions.kl_divergence(p, torch.distributions.Normal(0.0, 1.0)).mean(0).numpy()


def test_manifold_grid_goes_through_the_prior_inverse_cdf():
    values, rows, z = figures.manifold_latents(4, (1, 3), latent_dim=5)
    from scipy.stats import norm

    np.testing.assert_allclose(values, norm.ppf([0.125, 0.375, 0.625, 0.875]))
    np.testing.assert_allclose(rows, values)
    grid = z.view(4, 4, 5)
    # columns move the first named dimension left to right, rows the second from top (high) to bottom
    np.testing.assert_allclose(grid[0, :, 1].numpy(), values, rtol=1e-6)
    np.testing.assert_allclose(grid[:, 0, 3].numpy(), values[::-1], rtol=1e-6)
    assert float(grid[..., [0, 2, 4]].abs().max()) == 0.0


def test_manifold_of_a_learned_prior_goes_through_its_own_quantiles():
    """A mixture prior far from N(0, I): the grid sits in its equal-probability cells."""
    generator = torch.Generator().manual_seed(0)
    draws = torch.cat([torch.randn(3000, 3, generator=generator) * 0.1 + 5.0,
                       torch.randn(1000, 3, generator=generator) * 0.1 - 5.0])
    draws[:, 2] = draws[:, 2] * 3  # another scale on the row dimension
    cols, rows, z = figures.manifold_latents(4, (0, 2), latent_dim=3, prior_draws=draws)
    u = [0.125, 0.375, 0.625, 0.875]
    np.testing.assert_allclose(cols, np.quantile(draws[:, 0].double().numpy(), u))
    np.testing.assert_allclose(rows, np.quantile(draws[:, 2].double().numpy(), u))
    assert cols[0] < -4 and cols[1] > 4  # a quarter of the mass sits at -5, the rest at +5
    grid = z.view(4, 4, 3)
    np.testing.assert_allclose(grid[0, :, 0].numpy(), cols, rtol=1e-6)
    np.testing.assert_allclose(grid[:, 0, 2].numpy(), rows[::-1], rtol=1e-6)
    assert torch.allclose(grid[..., 1], draws[:, 1].mean())  # the other dimension at the prior's centre


def test_manifold_of_a_larger_latent_uses_the_two_most_informative_dims(run4d, tmp_path, monkeypatch):
    lat = figures.encode_latents(run4d)
    seen = {}
    real = figures.manifold_latents

    def spy(n, dims, latent_dim, prior_draws=None):
        seen["dims"] = dims
        return real(n, dims, latent_dim, prior_draws)

    monkeypatch.setattr(figures, "manifold_latents", spy)
    figures.manifold(run4d, tmp_path / "m.png", n=5, latents=lat)
    assert seen["dims"] == tuple(int(d) for d in np.argsort(-lat.kl_per_dim)[:2])


def test_latent_projection_2d_is_identity_else_pca():
    rng = np.random.default_rng(0)
    means2 = rng.normal(size=(50, 2))
    xy, axes, how = figures.latent_projection(means2)
    assert xy is means2 and axes == ("z0 (posterior mean)", "z1 (posterior mean)") and "2-D latent itself" in how
    means = rng.normal(size=(200, 6)) * np.array([5.0, 3.0, 0.1, 0.1, 0.1, 0.1])
    xy, axes, how = figures.latent_projection(means)
    assert axes[0] == "principal component 1" and "PCA projection of the 6-D means" in how
    # the first two principal directions are the two wide axes: the projection keeps their spread
    assert abs(xy[:, 0].std() - means[:, 0].std()) < 0.2 * means[:, 0].std()


def test_interpolation_runs_from_a_to_b():
    za, zb = torch.randn(3, 4), torch.randn(3, 4)
    z = figures.interpolate(za, zb, 5).view(3, 5, 4)
    torch.testing.assert_close(z[:, 0], za)
    torch.testing.assert_close(z[:, -1], zb)
    torch.testing.assert_close(z[:, 2], (za + zb) / 2)


def test_traversals_cover_active_dims_in_kl_order():
    lat = figures.Latents(np.zeros((2, 4)), np.ones((2, 4)), np.zeros(2), np.array([0.5, 3.0, 0.001, 1.0]),
                          np.array([0.1, 1.0, 0.0, 0.5]), np.array([True, True, False, True]), "test")
    assert figures.traversal_dims(lat) == [1, 3, 0]
    assert figures.traversal_dims(lat, max_dims=2) == [1, 3]


def test_training_curves_plot_the_metrics_and_mark_nan_events():
    rows = [{"epoch": e, "train_loss": 100.0 - e, "train_recon": 90.0 - e, "train_kl": 10.0, "beta": 1.0,
             "lr": 1e-3, "val_elbo": -95.0 + e, "val_recon": 85.0, "val_kl": 10.0, "grad_norm_max": 5.0,
             "nan_events": 0 if e < 3 else 2, "skipped_steps": 0 if e < 3 else 2} for e in range(1, 6)]
    rows[3]["val_elbo"] = None  # a non-finite value written as null
    fig = figures.draw_training_curves(rows)
    loss_ax, _, _, beta_ax, lr_ax, elbo_ax = fig.axes
    curve = [line for line in elbo_ax.lines if line.get_label() == "validation ELBO"][0]
    np.testing.assert_allclose(curve.get_ydata(), [-94, -93, -92, np.nan, -90])
    marks = [line for line in loss_ax.lines if list(line.get_xdata()) == [3, 3]]
    assert {m.get_label() for m in marks} >= {"NaN event", "skipped steps"}
    assert [line for line in elbo_ax.lines if list(line.get_xdata()) == [4, 4]]  # the null val_elbo


def test_latent_stats_plot_min_max_mean_per_epoch():
    rows = [{"epoch": e, "latent_mean_min": -e, "latent_mean_max": e, "latent_mean_mean": 0.1 * e,
             "latent_std_min": 0.5, "latent_std_max": 1.2, "latent_std_mean": 0.9} for e in (1, 2, 3)]
    fig = figures.draw_latent_stats(rows)
    mean_ax = fig.axes[0]
    mean_line = [line for line in mean_ax.lines if line.get_label() == "mean"][0]
    np.testing.assert_allclose(mean_line.get_ydata(), [0.1, 0.2, 0.3])
    band = mean_ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == -3 and band[:, 1].max() == 3


def test_kl_bar_chart_heights_and_active_colours():
    kl, active = [2.0, 0.0, 1.0], [True, False, True]
    fig = figures.draw_kl_per_dim(kl, active)
    bars = fig.axes[0].patches
    heights = {round(b.get_x() + b.get_width() / 2): b.get_height() for b in bars}
    assert heights == {0: 2.0, 1: 0.0, 2: 1.0}
    colours = {round(b.get_x() + b.get_width() / 2): b.get_facecolor() for b in bars}
    assert colours[0] == colours[2] != colours[1]
    assert "2 of 3 active" in fig.axes[0].get_title().replace("\n", " ")


def in_memory_run(config: Config, transform) -> Run:
    """An untrained model wrapped as a Run (figures need no training to be drawn)."""
    from vaelab.prepared_data import prepare_data

    data = prepare_data(config.data, transform=transform)
    torch.manual_seed(0)
    model = VAE(config.model, data.event_shape).eval()
    description = {"image_shape": list(data.image_shape), "event_shape": list(data.event_shape)}
    return Run(Path("."), config, description, model, data.transform, Path("model.safetensors"))


def test_pca_space_models_show_images_not_components(tmp_path):
    from vaelab.pca import fit_pca
    from vaelab.data import load_dataset

    config = tiny_config(**{"data.transform": "pca", "data.pca_components": 20, "model.latent_dim": 3,
                            "model.likelihood": "gaussian"})
    pca = fit_pca(load_dataset("mnist-sample", "train").images[:300], 20)
    run = in_memory_run(config, pca)
    images = figures._decode(run, torch.zeros(2, 3))
    assert images.shape == (2, 1, 28, 28) and 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    expected = pca.to_images(run.model.likelihood.mean(run.model.decode(torch.zeros(2, 3))))
    torch.testing.assert_close(images, expected)
    assert png_size(figures.prior_samples(run, tmp_path / "s.png", n=3))[0] > 100
    assert png_size(figures.manifold(run, tmp_path / "m.png", n=4))[0] > 100


def test_colour_models_draw_in_colour(tmp_path):
    config = tiny_config(**{"data.channels": 3, "data.transform": "scale", "model.latent_dim": 2,
                            "model.likelihood": "gaussian"})
    run = in_memory_run(config, None)
    path = figures.prior_samples(run, tmp_path / "colour.png", n=4)
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    # an untrained decoder gives each channel its own value: a grey rendering would have none
    assert (np.abs(rgb[..., 0] - rgb[..., 1]) > 20).mean() > 0.01
    assert make_grid(torch.rand(4, 3, 8, 8)).shape[-1] == 3


def test_figures_say_so_when_there_is_nothing_to_draw(tmp_path):
    path = figures.training_curves([], tmp_path / "empty.png")
    assert png_size(path)[0] > 100
    lat = figures.Latents(np.zeros((2, 3)), np.ones((2, 3)), np.zeros(2), np.zeros(3), np.zeros(3),
                          np.zeros(3, dtype=bool), "test")
    assert png_size(figures.traversals(None, tmp_path / "none.png", latents=lat))[0] > 100
    with pytest.raises(VaelabError, match="does not exist"):
        figures.kl_per_dim([1.0], [True], tmp_path / "missing" / "kl.png")


# -- progress grids, the GIF and TensorBoard -----------------------------------------------------

def test_progress_grids_decode_the_fixed_noise_each_epoch(run2d, tmp_path):
    frames = progress_frames(run2d.path)
    assert [f.name for f in frames] == ["epoch-0001.png", "epoch-0002.png"]
    # the last frame is the final model decoding the fixed noise, pixel for pixel
    from vaelab.imagegrid import save_grid

    z = cb.fixed_noise(2)
    reference = save_grid(decode_images(run2d.model, run2d.transform, z), run2d.path.parent / "ref.png", nrow=8)
    assert np.array_equal(np.asarray(Image.open(frames[-1])), np.asarray(Image.open(reference)))
    assert not np.array_equal(np.asarray(Image.open(frames[0])), np.asarray(Image.open(frames[1])))
    with Image.open(run2d.path / PROGRESS_DIR / PROGRESS_GIF) as gif:
        assert gif.format == "GIF" and gif.n_frames == 2
    # the GIF can be made elsewhere from the grids alone (figures of a run that lost it)
    elsewhere = write_progress_gif(run2d.path, tmp_path / "again.gif")
    with Image.open(elsewhere) as gif:
        assert gif.n_frames == 2 and gif.size == (Image.open(frames[0]).width, Image.open(frames[0]).height + 16)
    assert write_progress_gif(tmp_path) is None  # no grids, no GIF


def test_progress_codes_come_from_the_model_prior():
    """Under a learned prior the grids show the same draw of that prior, never N(0, I) codes."""
    from vaelab.families import build_model

    def model(prior):
        c = Config()
        c.apply_overrides(["model.latent_dim=3", "model.hidden=[8]", f"model.prior={prior}",
                           "model.prior_components=4"])
        torch.manual_seed(0)
        return build_model(c.validate().model, (1, 4, 4))

    plain = model("standard-normal")
    assert torch.equal(cb.fixed_codes(plain, 5), cb.fixed_noise(3, 5))
    for prior in ("mog", "vamp"):
        m = model(prior)
        state = torch.random.get_rng_state()
        z = cb.fixed_codes(m, 5)
        assert torch.equal(torch.random.get_rng_state(), state)  # training's RNG is left alone
        reference = m.prior.sample(5, generator=torch.Generator().manual_seed(cb.NOISE_SEED), device="cpu")
        assert torch.equal(z, reference) and torch.equal(cb.fixed_codes(m, 5), z)
        with torch.no_grad():
            m.prior.pseudo_inputs.add_(0.3) if prior == "vamp" else m.prior.means.add_(0.3)
        assert not torch.equal(cb.fixed_codes(m, 5), z)  # the prior as it is now


def test_training_time_outputs_do_not_change_training(run2d, tmp_path_factory):
    plain = load_run(tiny_run(tmp_path_factory, "2d-plain"))
    def strip(rows):  # everything but the wall-clock timings
        return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]

    assert strip(run2d.metrics()) == strip(plain.metrics())
    assert not (plain.path / PROGRESS_DIR).exists()
    for name, tensor in run2d.model.state_dict().items():
        torch.testing.assert_close(tensor, plain.model.state_dict()[name], rtol=0, atol=0)


def test_sample_every_is_validated():
    with pytest.raises(VaelabError, match="train.sample_every must be at least 0"):
        tiny_config(**{"train.sample_every": -1})
    assert [type(c) for c in default_callbacks(tiny_config(**{"train.sample_every": 3}))] == \
        [cb.CollapseMonitor, cb.ProgressGrids]


def test_tensorboard_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(VaelabError, match="pip install tensorboard"):
        default_callbacks(tiny_config(**{"train.tensorboard": True}))


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed")
def test_tensorboard_events_are_readable_by_tensorboard(run2d):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run2d.path / cb.TENSORBOARD_DIR), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    rows = run2d.metrics()
    for key, tag in (("train_loss", "train/loss"), ("val_elbo", "val/elbo"), ("beta", "train/beta"),
                     ("active_units", "val/active_units"), ("latent_std_max", "latent/std_max")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [r["epoch"] for r in rows]
        np.testing.assert_allclose([e.value for e in events], [r[key] for r in rows], rtol=1e-5)
    assert "kl_per_dim/z001" in tags["scalars"]
    images = acc.Images("samples/fixed_noise")
    assert [e.step for e in images] == [1, 2] and images[0].width > 100


# -- diagnostics ----------------------------------------------------------------------------------

def test_collapse_warning_on_near_zero_kl_or_no_active_units():
    base = {"epoch": 3, "beta": 1.0, "train_kl": 5.0, "val_kl": 5.0, "active_units": 4}
    assert collapse_warning(base) is None
    assert "KL 0.100 nats/image" in collapse_warning({**base, "val_kl": 0.1})
    assert "no active latent units" in collapse_warning({**base, "val_kl": 0.1, "active_units": 0})
    # means that do not move although the KL is far from 0: a dead encoder, not collapse
    assert collapse_warning({**base, "val_kl": 12.0, "active_units": 0}).startswith("dead encoder")
    # no active unit at a KL the KL term is still pulling down (<= 5 nats): collapse under way
    assert collapse_warning({**base, "val_kl": 0.8, "active_units": 0}).startswith("posterior collapse")
    # beta = 0: no collapse, but an encoder whose means do not move is still dead
    assert collapse_warning({**base, "val_kl": 0.0, "beta": 0.0}) is None
    assert collapse_warning({**base, "val_kl": 0.0, "active_units": 0, "beta": 0.0}).startswith("dead encoder")
    # a code in use but reconstructions no better than the mean image: the model failed
    failed = collapse_warning({**base, "val_recon_mse": 0.08, "val_mean_image_mse": 0.081})
    assert failed.startswith("reconstructions no better than the mean image")
    assert collapse_warning({**base, "val_recon_mse": 0.02, "val_mean_image_mse": 0.081}) is None
    # the trainer's name for it is the same check
    from vaelab.training.trainer import collapse_warning as trainer_check

    assert trainer_check({**base, "val_kl": 0.1}, None) == collapse_warning({**base, "val_kl": 0.1})


def _zero_z_weights(model: VAE) -> None:
    first = next(m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        first.weight.zero_()


def test_decoder_ignoring_z_is_detected_in_report_and_log(run4d):
    images, _ = run4d.images("test")
    model = load_run(run4d.path).model
    before = decoder_z_sensitivity(model, run4d.transform, images)
    assert before > 0.01
    _zero_z_weights(model)
    assert decoder_z_sensitivity(model, run4d.transform, images) < 1e-10
    findings = diagnose_model(kl=3.0, active_units=4, latent_dim=4, z_sensitivity=0.0)
    assert findings[0].level == "collapse" and findings[0].title == "samples independent of z"
    assert diagnose_model(kl=3.0, active_units=4, latent_dim=4, z_sensitivity=before)[0].level == "ok"
    # the training-time monitor warns once when it starts and once when it ends
    logged = []
    trainer = SimpleNamespace(model=model, data=SimpleNamespace(transform=run4d.transform), val_images=images,
                              train_images=images, epoch=5, log=logged.append, config=run4d.config)
    monitor = cb.CollapseMonitor()
    monitor.on_epoch_end(trainer, {})
    monitor.on_epoch_end(trainer, {})
    assert len(logged) == 1 and logged[0].startswith("WARNING: samples independent of z at epoch 5")
    trainer.model = run4d.model
    monitor.on_epoch_end(trainer, {})
    assert len(logged) == 2 and "depend on z again" in logged[1]


def test_collapse_is_not_judged_in_the_warm_up():
    collapsed = {"beta": 1.0, "train_kl": 0.1, "val_kl": 0.1, "active_units": 0}
    assert [collapse_warning({**collapsed, "epoch": e}) is None for e in (1, 2, 3, 4)] == [True, True, False, False]
    assert collapse_warning({**collapsed, "epoch": 4}).startswith("posterior collapse")
    # a KL-annealing schedule: not before its first rise has ended
    linear = TrainConfig(kl_schedule="linear", warmup_epochs=10)
    assert collapse_warning({**collapsed, "epoch": 9, "beta": 0.9}, linear) is None
    assert collapse_warning({**collapsed, "epoch": 10}, linear) is not None
    cyclical = TrainConfig(kl_schedule="cyclical", warmup_epochs=4, cycle_epochs=8)
    assert collapse_warning({**collapsed, "epoch": 3, "beta": 0.75}, cyclical) is None
    assert collapse_warning({**collapsed, "epoch": 9, "beta": 0.25}, cyclical) is not None  # a later rise is judged
    ae_then_anneal = TrainConfig(kl_schedule="ae-then-anneal", beta=1.0)
    assert collapse_warning({**collapsed, "epoch": 8, "beta": 0.5}, ae_then_anneal) is None
    assert collapse_warning({**collapsed, "epoch": 8, "beta": 1.0}, ae_then_anneal) is not None


def test_samples_independent_of_z_wait_for_the_warm_up_in_log_and_report(run4d):
    images, _ = run4d.images("test")
    model = load_run(run4d.path).model
    _zero_z_weights(model)
    logged = []
    trainer = SimpleNamespace(model=model, data=SimpleNamespace(transform=run4d.transform), val_images=images,
                              train_images=images, epoch=1, log=logged.append, config=run4d.config)
    monitor = cb.CollapseMonitor()
    for trainer.epoch in (1, 2):
        monitor.on_epoch_end(trainer, {"beta": 1.0})
    assert logged == []
    trainer.epoch = 3
    monitor.on_epoch_end(trainer, {"beta": 1.0})
    assert len(logged) == 1 and logged[0].startswith("WARNING: samples independent of z at epoch 3")
    # the report of a run that ended in the warm-up says what the log said: not yet a verdict
    findings = diagnose_model(kl=3.0, active_units=4, latent_dim=4, z_sensitivity=0.0,
                                 warmup=collapse_warmup(2, 1.0, run4d.config.train))
    assert [f.level for f in findings] == ["warning"]
    assert "too early" in findings[0].title and "samples independent of z" in findings[0].text


def test_latent_activity_counts_units_whose_mean_moves():
    means = torch.stack([torch.linspace(-2, 2, 100), torch.full((100,), 0.3), 0.05 * torch.randn(100)], 1)
    activity = latent_activity(means, torch.ones_like(means))
    assert activity["active"] == [True, False, False] and activity["active_units"] == 1
    assert math.isclose(activity["kl_per_dim"][1], 0.5 * 0.3 ** 2, rel_tol=1e-6)


def test_instability_episodes_from_metrics():
    rows = [{"epoch": e, "train_loss": 10.0, "val_elbo": -10.0, "grad_norm_max": 1.0, "nan_events": 0,
             "skipped_steps": 0, "latent_std_max": 1.0} for e in range(1, 8)]
    assert instability_episodes(rows) == [] and diagnose_training(rows)[0].level == "ok"
    rows[2].update(nan_events=1, skipped_steps=1)
    for r in rows[3:]:
        r.update(nan_events=1, skipped_steps=1)  # counters are cumulative: one episode only
    rows[4]["grad_norm_max"] = 500.0
    rows[5]["latent_std_max"] = 40.0
    rows[6]["train_loss"] = None
    found = [(e.epoch, e.kind) for e in instability_episodes(rows)]
    assert found == [(3, "nan"), (3, "skipped"), (5, "grad-spike"), (6, "variance"), (7, "non-finite")]
    finding = diagnose_training(rows)[0]
    assert finding.level == "warning" and "epoch 5: largest gradient norm 500" in finding.text
