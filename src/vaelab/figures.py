"""Figures of a run as PNG files: what the model generates, how it encodes, how it trained.

Each figure function takes a Run (or plain arrays) and a path, writes one PNG and returns
the path. Drawing uses matplotlib's object API (``Figure`` rendered by Agg), never pyplot,
so nothing global changes and no display is needed. Images always go through the run's
transform back to pixels (PCA inverse, clipped to [0, 1]), so colour and PCA-space models
show real images.

``write_figures(run, out_dir)`` writes them all; FIGURES names and explains each.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from .atomicio import write_output
from .diagnostics import instability_episodes, latent_activity
from .evaluate import ElboPass
from .errors import VaelabError
from .imagegrid import make_grid
from .images import decode_images
from .imagegrid import paired_rows
from .latent.priors import learned_prior_draws
from .rundir.progress import PROGRESS_DIR, PROGRESS_GIF, progress_frames, read_step_stats, write_progress_gif

DPI = 100
NATS = "nats/image"

#: name -> (title, caption) of every figure write_figures makes, in report order
FIGURES: dict[str, tuple[str, str]] = {
    "samples": ("Samples from the prior", "Decoder means for z drawn from the model's prior (model.prior)."),
    "reconstructions": ("Reconstructions", "Held-out images (the test split; the validation images where the "
                        "dataset has none), upper row of each pair, and the decoder mean at their posterior mean "
                        "(lower row)."),
    "analogies": ("Posterior samples (analogies)", "Each row: a held-out image, then decodings of independent "
                  "samples z ~ q(z|x): what the code keeps of the image and what it leaves to chance."),
    "manifold": ("Latent manifold", "Decoder means over a grid of z through the prior's inverse CDF "
                 "(a learned prior's: from its draws)."),
    "latent_space": ("Latent space", "Posterior means of held-out images, coloured by label."),
    "interpolation": ("Interpolation", "Decodings along the straight line between the posterior means of two "
                      "held-out images (originals at both ends)."),
    "traversals": ("Latent traversals", "One active dimension per row, varied from -3 to 3 with the others at "
                   "the posterior mean of one held-out image."),
    "kl_per_dim": ("KL per latent dimension", "Average KL per latent dimension over held-out images (the "
                   "model's own; against N(0, 1) for a prior or flow whose KL has no parts per dimension); "
                   "active units (Var_x E[z_i] > 0.01) in colour."),
    "training_curves": ("Training curves", "Per epoch: training loss, reconstruction, KL, beta, learning "
                        "rate and validation ELBO; NaN and skip events marked."),
    "latent_stats": ("Latent statistics over training", "Per epoch (every train.stats_every_steps steps when "
                     "set), over a fixed batch of validation images: the spread (min, max, mean) of posterior "
                     "means and standard deviations."),
    "progress": ("Progress over training", "The same fixed noise decoded at saved epochs."),
}

#: the figures of a model with a class variable y (semi-supervised), after FIGURES
CLASS_FIGURES: dict[str, tuple[str, str]] = {
    "class_analogies": ("Analogies: one style, every class", "Each row: a held-out image, then its style z (the "
                        "posterior mean at its most probable class) decoded as every class y, as in Kingma et al. "
                        "2014: what z keeps (slant, thickness) and what y sets (the digit)."),
    "class_samples": ("Samples by class", "Each column one class y, each row one z ~ N(0, I) shared along the row."),
}

PRIOR_NAMES = {"standard-normal": "z ~ N(0, I)", "mog": "z from the learned mixture prior",
               "vamp": "z from the VampPrior"}


# -- what the figures share ----------------------------------------------------------------

@dataclass
class Latents:
    """Posterior means and standard deviations of a split, with labels and per-dim activity."""

    means: np.ndarray  # (N, L)
    stds: np.ndarray  # (N, L)
    labels: np.ndarray  # (N,), -1 where unknown
    kl_per_dim: np.ndarray  # (L,) nats, averaged over images
    var_of_means: np.ndarray  # (L,)
    active: np.ndarray  # (L,) bool
    split: str

    @property
    def by_kl(self) -> np.ndarray:
        """Dimension indices, most informative first."""
        return np.argsort(-self.kl_per_dim, kind="stable")


def figure_split(run) -> str:
    """The split figures show: test where the dataset has one, else the held-out validation."""
    from .data import splits

    try:
        return "test" if "test" in splits(run.config.data.name) else "val"
    except VaelabError:
        return "test"


def encode_latents(run, split: str | None = None, limit: int = 10000) -> Latents:
    split = split or figure_split(run)
    images, labels = run.images(split)
    images, labels = images[:limit], labels[:limit]
    run.model.eval()
    measured = ElboPass(run.model, run.transform, torch.Generator(device=run.device).manual_seed(0))
    for start in range(0, len(images), 1000):
        measured.add(images[start:start + 1000].to(run.device))
    # figures show the code decode() takes: a hierarchy's top layer (its columns come last)
    top = run.model.latent_dim
    means, stds = (t[:, -top:].cpu() for t in measured.posteriors())
    activity = latent_activity(means, stds, measured.result()["kl_per_dim"][-top:])
    return Latents(means.numpy(), stds.numpy(), labels.numpy(), np.array(activity["kl_per_dim"]),
                   np.array(activity["var_of_means"]), np.array(activity["active"], dtype=bool), split)


def _decoded_as(run) -> str:
    """What a figure that decodes codes with decode(z) shows beyond z: M2 decodes one class."""
    return " (decoded as class 0)" if hasattr(run.model, "n_classes") else ""


def _decode(run, z: torch.Tensor) -> torch.Tensor:
    return decode_images(run.model, run.transform, z).cpu()


def across_classes(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of n images taken round-robin over the classes (the first of each class, then
    the second, ...), so a figure shows every class rather than the first n of one."""
    labels = torch.as_tensor(labels).reshape(-1)
    if len(labels) == 0:
        return torch.zeros(0, dtype=torch.long)
    by_class = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
    order = [int(idx[r]) for r in range(max(len(i) for i in by_class)) for idx in by_class if r < len(idx)]
    return torch.tensor(order[:n], dtype=torch.long)


def _originals(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as float in [0, 1]: the real picture, not the binarized or PCA input."""
    return images.float() / 255.0


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(fig: Figure, path: str | Path, dpi: int | None = DPI) -> Path:
    """The figure as a PNG, written whole or not at all."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi or "figure", facecolor="white")
    return write_output(path, buffer.getvalue())


def _show_grid(ax, images: torch.Tensor, nrow: int, row_labels=None, col_labels=None,
               pad: int = 1) -> tuple[int, int]:
    """Draw images (N, C, H, W) in rows of ``nrow``; label rows and columns. Returns (h, w)."""
    grid = make_grid(images, nrow=nrow, pad=pad)
    _, _, h, w = images.shape
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    rows = math.ceil(len(images) / nrow)
    if row_labels is not None:
        ax.set_yticks([pad + r * (h + pad) + h / 2 - 0.5 for r in range(rows)], labels=list(row_labels))
    else:
        ax.set_yticks([])
    if col_labels is not None:
        ax.set_xticks([pad + c * (w + pad) + w / 2 - 0.5 for c in range(nrow)], labels=list(col_labels))
    else:
        ax.set_xticks([])
    ax.tick_params(length=0, labelsize=9 if nrow <= 10 else 8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return h, w


def _title(ax, text: str, fontsize: int = 10) -> None:
    """A title wrapped to the width of its axes (about 15 characters per inch at size 10)."""
    import textwrap

    width_in = ax.figure.get_figwidth() * ax.get_position().width
    ax.set_title(textwrap.fill(text, max(30, int(width_in * 150 / fontsize))), fontsize=fontsize)


def _epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _grid_figure(images: torch.Tensor, nrow: int, title: str, path, row_labels=None, col_labels=None,
                 xlabel: str | None = None, ylabel: str | None = None) -> Path:
    _, _, h, w = images.shape
    rows = math.ceil(len(images) / nrow)
    # about 0.45 inch per 28-pixel image, plus room for titles and labels
    scale = 0.45 * max(h, w) / 28
    side = max(0.35, min(0.6, scale))
    fig = _new_figure(1.4 + nrow * side * w / max(h, w), 0.9 + rows * side * h / max(h, w))
    ax = fig.add_subplot()
    _show_grid(ax, images, nrow, row_labels, col_labels)
    _title(ax, title)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    return save_figure(fig, path)


# -- what the model generates ----------------------------------------------------------------

def prior_samples(run, path, n: int = 10, seed: int = 0) -> Path:
    """An n x n grid of decoder means for z drawn from the prior."""
    images = run.sample(n * n, seed=seed)
    prior = PRIOR_NAMES.get(run.config.model.prior, run.config.model.prior)
    return _grid_figure(images, n, f"{n * n} samples from the prior, {prior} "
                        f"({run.config.model.latent_dim}-D latent)", path)


def reconstructions(run, path, n: int = 20, per_row: int = 10, split: str | None = None, seed: int = 0) -> Path:
    """Pairs of rows: originals above their reconstructions at the posterior mean."""
    split = split or figure_split(run)
    images, labels = run.images(split)
    images = images[across_classes(labels, n)]
    recon = run.reconstruct(images, seed=seed)
    grid, width = paired_rows(_originals(images), recon, per_row)
    labels = ["original", "reconstruction"] * (len(grid) // (2 * width))
    return _grid_figure(grid, width, f"Reconstructions of {split} images (decoder mean at the "
                        f"posterior mean)", path, row_labels=labels)


@torch.no_grad()
def analogies(run, path, n_rows: int = 8, n_samples: int = 8, split: str | None = None, seed: int = 0) -> Path:
    """Each row an original, then decodings of ``n_samples`` draws from its posterior."""
    split = split or figure_split(run)
    images, labels = run.images(split)
    images = images[across_classes(labels, n_rows)]
    model, device = run.model, run.device
    gen = torch.Generator(device=device).manual_seed(seed)
    x = run.transform.fixed(images.to(device))
    # the model's own posterior sampling: through a flow's steps, or every layer of a hierarchy
    decoded = torch.stack([run.transform.to_images(model.reconstruct(x, sample_posterior=True, generator=gen)).cpu()
                           for _ in range(n_samples)], 1)
    rows = torch.cat([_originals(images).unsqueeze(1), decoded], dim=1).flatten(0, 1)
    cols = ["orig."] + [str(i + 1) for i in range(n_samples)]
    return _grid_figure(rows, n_samples + 1, f"Posterior samples: each {split} image, then decodings of "
                        f"z ~ q(z|x)", path, col_labels=cols, xlabel="original, then posterior samples 1, 2, ...")


def manifold_latents(n: int, dims: tuple[int, int], latent_dim: int, prior_draws: torch.Tensor | None = None
                     ) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """The grid values F^-1(u) of dims[0] and of dims[1], u at the centres of n
    equal-probability cells, and the n*n latent vectors in row-major order: columns move
    dims[0] left to right, rows move dims[1] from high (top) to low; every other dimension
    stays at the prior's centre.

    F is N(0, 1)'s CDF (the centre 0), or, given ``prior_draws`` (m, L) of a learned prior,
    the empirical CDF of each dimension's draws (the centre their mean): equal-probability
    cells of the prior the model was trained with, not of N(0, I)."""
    from scipy.stats import norm

    u = (np.arange(n) + 0.5) / n
    if prior_draws is None:
        per_dim = {d: norm.ppf(u) for d in dims}
        z = torch.zeros((n * n, latent_dim))
    else:
        draws = prior_draws.double().cpu().numpy()
        per_dim = {d: np.quantile(draws[:, d], u) for d in dims}
        z = torch.as_tensor(draws.mean(0), dtype=torch.float32).repeat(n * n, 1)
    cols = torch.as_tensor(per_dim[dims[0]], dtype=torch.float32)
    rows = torch.as_tensor(per_dim[dims[1]], dtype=torch.float32)
    z[:, dims[0]] = cols.repeat(n)
    z[:, dims[1]] = rows.flip(0).repeat_interleave(n)
    return per_dim[dims[0]], per_dim[dims[1]], z


PRIOR_DRAWS = 20000  # a learned prior's draws whose quantiles place the manifold's grid


def manifold(run, path, n: int = 20, latents: Latents | None = None) -> Path:
    """Decoder means over an n x n grid of z = F^-1(u), u evenly spaced in (0, 1), F the
    prior's marginal CDF per dimension (N(0, 1), or a learned prior's, from its draws).

    A 2-D latent is the whole manifold; a larger one is shown along its two most active
    dimensions (largest KL), the others held at the prior's centre.
    """
    dim = run.config.model.latent_dim
    if dim < 2:
        return _message_figure(path, "Latent manifold", "a 1-D latent has no 2-D manifold")
    draws = learned_prior_draws(run.model, PRIOR_DRAWS, seed=0)
    if draws is None:
        grid, unit = "z = Phi^-1(u)", "prior standard deviations"
    else:
        grid = f"z = F^-1(u), F the {run.config.model.prior} prior's marginals ({PRIOR_DRAWS:,} draws)"
        unit = "quantiles of the prior's draws"
    if dim == 2:
        dims = (0, 1)
        title = f"2-D latent manifold: decoder means on a grid {grid}" + _decoded_as(run)
    else:
        latents = latents or encode_latents(run)
        dims = tuple(int(d) for d in latents.by_kl[:2])
        title = (f"Latent manifold along z{dims[0]} and z{dims[1]}, the two most active of {dim} "
                 f"dimensions (others at the prior's centre), {grid}" + _decoded_as(run))
    values, rows, z = manifold_latents(n, dims, dim, draws)
    images = _decode(run, z)
    ticks = sorted(set(np.linspace(0, n - 1, min(n, 6)).round().astype(int)))  # both ends included
    fig = _new_figure(7.5, 7.8)
    ax = fig.add_subplot()
    h, w = _show_grid(ax, images, n)
    centres = [1 + k * (w + 1) + w / 2 - 0.5 for k in range(n)]
    ax.set_xticks([centres[k] for k in ticks], labels=[f"{values[k]:.2f}" for k in ticks])
    ax.set_yticks([centres[k] for k in ticks], labels=[f"{rows[n - 1 - k]:.2f}" for k in ticks])
    ax.tick_params(length=3)
    ax.set_xlabel(f"z{dims[0]} ({unit})")
    ax.set_ylabel(f"z{dims[1]} ({unit})")
    _title(ax, title)
    return save_figure(fig, path)


# -- how it encodes ----------------------------------------------------------------------------

def latent_projection(means: np.ndarray) -> tuple[np.ndarray, tuple[str, str], str]:
    """2-D coordinates of posterior means, axis names, and a phrase saying which projection."""
    dim = means.shape[1]
    if dim == 1:
        return np.stack([means[:, 0], np.zeros(len(means))], 1), ("z0 (posterior mean)", ""), "the 1-D latent"
    if dim == 2:
        return means, ("z0 (posterior mean)", "z1 (posterior mean)"), "the 2-D latent itself"
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2).fit(means)
    share = 100 * pca.explained_variance_ratio_.sum()
    return (pca.transform(means), ("principal component 1", "principal component 2"),
            f"a PCA projection of the {dim}-D means ({share:.0f}% of their variance)")


def latent_space(run_or_latents, path, max_points: int = 5000) -> Path:
    """Posterior means of test images coloured by label: 2-D directly, else their PCA."""
    lat = run_or_latents if isinstance(run_or_latents, Latents) else encode_latents(run_or_latents)
    means, labels = lat.means[:max_points], lat.labels[:max_points]
    dim = means.shape[1]
    fig = _new_figure(7.0, 6.0)
    ax = fig.add_subplot()
    xy, (xlabel, ylabel), how = latent_projection(means)
    known = labels >= 0
    classes = np.unique(labels[known])
    if len(classes) == 0:
        ax.scatter(xy[:, 0], xy[:, 1], s=3, alpha=0.5, color="tab:blue", linewidths=0)
    else:
        cmap = _class_colours(len(classes))
        for i, c in enumerate(classes):
            pick = labels == c
            ax.scatter(xy[pick, 0], xy[pick, 1], s=3, alpha=0.6, color=cmap[i], linewidths=0, label=str(c))
        if (~known).any():
            ax.scatter(xy[~known, 0], xy[~known, 1], s=3, alpha=0.4, color="0.6", linewidths=0, label="unlabelled")
        ax.legend(title="label", markerscale=4, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if dim == 2:  # the prior's 1 and 2 standard-deviation circles, for scale
        t = np.linspace(0, 2 * np.pi, 200)
        for r in (1, 2):
            ax.plot(r * np.cos(t), r * np.sin(t), color="0.3", lw=0.8, ls="--")
        ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _title(ax, f"Posterior means of {len(means)} {lat.split} images, {how}")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _class_colours(k: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if k <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(k)]


def interpolate(za: torch.Tensor, zb: torch.Tensor, steps: int) -> torch.Tensor:
    """(P, L) start and end points -> (P * steps, L): for each pair, z = (1-t) z_a + t z_b, t in [0, 1]."""
    t = torch.linspace(0, 1, steps, dtype=za.dtype).view(1, -1, 1)
    return (za.unsqueeze(1) * (1 - t) + zb.unsqueeze(1) * t).reshape(-1, za.shape[1])


@torch.no_grad()
def interpolation(run, path, pairs: int = 5, steps: int = 10, split: str | None = None) -> Path:
    """Rows of decodings along the line between the posterior means of two images."""
    split = split or figure_split(run)
    images, _ = run.images(split)
    if len(images) < 2:
        raise VaelabError(f"interpolation needs two {split} images, the split has {len(images)}")
    pairs = min(pairs, len(images) // 2)
    a, b = images[:pairs], images[pairs:2 * pairs]
    means, _ = run.encode(torch.cat([a, b]))
    za, zb = means[:pairs], means[pairs:]
    t = torch.linspace(0, 1, steps)
    z = interpolate(za, zb, steps)
    decoded = _decode(run, z).view(pairs, steps, *images.shape[1:])
    rows = torch.cat([_originals(a).unsqueeze(1), decoded, _originals(b).unsqueeze(1)], 1).flatten(0, 1)
    cols = ["A"] + [f"{v:.1f}" for v in t.tolist()] + ["B"]
    return _grid_figure(rows, steps + 2, f"Interpolation between posterior means of {split} image pairs "
                        f"A and B: z = (1-t) z_A + t z_B{_decoded_as(run)}", path, col_labels=cols,
                        xlabel="original A, decodings for t from 0 to 1, original B")


def traversal_dims(latents: Latents, max_dims: int = 32) -> list[int]:
    """The active dimensions, most informative (largest KL) first, at most ``max_dims``."""
    return [int(d) for d in latents.by_kl if latents.active[d]][:max_dims]


def traversals(run, path, latents: Latents | None = None, steps: int = 11, span: float = 3.0,
               max_dims: int = 32) -> Path:
    """One row per active dimension (most informative first), varied over [-span, span]."""
    latents = latents or encode_latents(run)
    dims = traversal_dims(latents, max_dims)
    if not dims:
        return _message_figure(path, "Latent traversals",
                               "no active latent unit: nothing to traverse (posterior collapse)")
    base = torch.from_numpy(latents.means[0]).float()
    values = torch.linspace(-span, span, steps)
    z = base.repeat(len(dims) * steps, 1)
    for r, d in enumerate(dims):
        z[r * steps:(r + 1) * steps, d] = values
    images = _decode(run, z)
    rows = [f"z{d} ({latents.kl_per_dim[d]:.2f} nats)" for d in dims]
    cols = [f"{round(v, 6) + 0.0:+.1f}" for v in values.tolist()]  # + 0.0: no "-0.0"
    active = int(latents.active.sum())
    shown = f"{len(dims)} of {active}" if len(dims) < active else f"all {active}"
    return _grid_figure(images, steps, f"Traversals of {shown} active dimensions (KL per dimension in "
                        f"brackets); others at the posterior mean of one {latents.split} image{_decoded_as(run)}", path,
                        row_labels=rows, col_labels=cols, xlabel="z value (prior standard deviations)")


def kl_per_dim(kl, active, path, title: str | None = None) -> Path:
    """Bar chart of KL per latent dimension (nats), active units in colour."""
    return save_figure(draw_kl_per_dim(kl, active, title), path)


def draw_kl_per_dim(kl, active, title: str | None = None) -> Figure:
    kl, active = np.asarray(kl, dtype=float), np.asarray(active, dtype=bool)
    dims = np.arange(len(kl))
    fig = _new_figure(max(5.0, min(14.0, 1.5 + 0.3 * len(kl))), 3.8)
    ax = fig.add_subplot()
    for pick, colour, name in ((active, "tab:blue", "active"), (~active, "0.7", "inactive")):
        if pick.any():  # an empty bar set would put a wrongly coloured entry in the legend
            ax.bar(dims[pick], kl[pick], color=colour, label=f"{name} ({int(pick.sum())})")
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("KL (nats/image)")
    if len(kl) <= 40:
        ax.set_xticks(dims)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _title(ax, title or f"KL per latent dimension: {int(active.sum())} of {len(kl)} active, "
           f"total {kl.sum():.2f} {NATS}")
    return fig


# -- how it trained ---------------------------------------------------------------------------

def _series(rows: list[dict], key: str) -> np.ndarray:
    return np.array([r.get(key) if isinstance(r.get(key), (int, float)) else np.nan for r in rows], dtype=float)


def _mark_episodes(axes, rows: list[dict]) -> None:
    colours = {"nan": "red", "skipped": "red", "non-finite": "red", "grad-spike": "orange", "variance": "purple"}
    seen = set()
    for e in instability_episodes(rows):
        for ax in axes:
            label = None
            if ax is axes[0] and e.kind not in seen:
                label = {"nan": "NaN event", "skipped": "skipped steps", "non-finite": "non-finite loss",
                         "grad-spike": "gradient spike", "variance": "exploding variance"}[e.kind]
            ax.axvline(e.epoch, color=colours[e.kind], lw=1.2, ls=":", alpha=0.9, label=label)
        seen.add(e.kind)


def training_curves(rows: list[dict], path, title: str = "Training curves") -> Path:
    """Loss, reconstruction, KL, beta, learning rate and validation ELBO per epoch."""
    if not rows:
        return _message_figure(path, title, "no metrics yet (metrics.jsonl is empty)")
    return save_figure(draw_training_curves(rows, title), path)


def draw_training_curves(rows: list[dict], title: str = "Training curves") -> Figure:
    epochs = _series(rows, "epoch")
    fig = _new_figure(12.0, 6.5)
    axes = fig.subplots(2, 3).ravel()
    panels = [
        ("loss", [("train_loss", "train (recon + beta KL)"), ("-val_elbo", "validation -ELBO")], NATS),
        ("reconstruction", [("train_recon", "train"), ("val_recon", "validation")], NATS),
        ("KL(q(z|x) || p(z))", [("train_kl", "train"), ("val_kl", "validation")], NATS),
        ("beta (KL weight)", [("beta", "beta")], "weight"),
        ("learning rate", [("lr", "lr")], "lr"),
        ("validation ELBO", [("val_elbo", "validation ELBO")], NATS),
    ]
    for ax, (name, series, unit) in zip(axes, panels):
        for key, label in series:
            values = -_series(rows, key[1:]) if key.startswith("-") else _series(rows, key)
            if np.isfinite(values).any():
                ax.plot(epochs, values, marker="o" if len(rows) < 30 else None, ms=3, label=label)
        ax.set_title(name, fontsize=10)
        _epoch_axis(ax)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
    if np.nanmin(_series(rows, "lr")) > 0 and np.nanmax(_series(rows, "lr")) / np.nanmin(_series(rows, "lr")) > 20:
        axes[4].set_yscale("log")
    _mark_episodes(axes, rows)
    for ax in axes[:3]:
        ax.legend(fontsize=8)
    fig.suptitle(title + " (nats per image, summed over pixels)", fontsize=11)
    return fig


def latent_stats(rows: list[dict], path) -> Path:
    """Per epoch (metrics.jsonl rows) or every N steps (progress/steps.jsonl rows, whose epoch
    is fractional): min, max and mean of posterior means and standard deviations on a fixed batch."""
    if not rows or not np.isfinite(_series(rows, "latent_mean_mean")).any():
        return _message_figure(path, "Latent statistics over training",
                               "no latent statistics in metrics.jsonl (train.log_latent_stats=false)")
    return save_figure(draw_latent_stats(rows), path)


def draw_latent_stats(rows: list[dict]) -> Figure:
    epochs = _series(rows, "epoch")
    fig = _new_figure(11.0, 4.0)
    axes = fig.subplots(1, 2)
    for ax, what, label in ((axes[0], "mean", "posterior mean E[z]"), (axes[1], "std", "posterior std")):
        low, high, mid = (_series(rows, f"latent_{what}_{k}") for k in ("min", "max", "mean"))
        ax.fill_between(epochs, low, high, alpha=0.25, color="tab:blue", label="min to max")
        ax.plot(epochs, mid, color="tab:blue", label="mean")
        ax.plot(epochs, low, color="tab:blue", lw=0.8, ls="--")
        ax.plot(epochs, high, color="tab:blue", lw=0.8, ls="--")
        ax.axhline(0.0 if what == "mean" else 1.0, color="0.3", lw=0.8, ls=":", label="prior")
        _epoch_axis(ax)
        ax.set_ylabel(f"{label} (prior standard deviations)")
        _title(ax, f"{label}: spread over units and images")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    low, high = np.nanmin(_series(rows, "latent_std_min")), np.nanmax(_series(rows, "latent_std_max"))
    if low > 0 and high / low > 50:  # stds shrink by orders of magnitude on well-fitted data
        axes[1].set_yscale("log")
        if low >= 1e-3:  # plain decimals read best; below 1e-3 they would print as 0.000
            from matplotlib.ticker import ScalarFormatter

            axes[1].yaxis.set_major_formatter(ScalarFormatter())
    fig.suptitle("Latent statistics over training (a fixed batch of validation images)", fontsize=11)
    return fig


def progress(run_dir, path, max_frames: int = 6) -> Path:
    """The saved fixed-noise grids side by side: first, last and evenly spaced between."""
    from PIL import Image

    frames = progress_frames(run_dir)
    if not frames:
        return _message_figure(path, "Progress over training",
                               "no progress grids (train with --set train.sample_every=N)")
    pick = sorted(set(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)))
    fig = _new_figure(2.6 * len(pick), 3.0)
    axes = np.atleast_1d(fig.subplots(1, len(pick)))
    for ax, i in zip(axes, pick):
        with Image.open(frames[i]) as image:
            array = np.asarray(image.convert("RGB"))
        ax.imshow(array, interpolation="nearest")
        ax.set_title(f"epoch {int(frames[i].stem.split('-')[1])}", fontsize=10)
        ax.set_axis_off()
    fig.suptitle("The same fixed noise z decoded during training", fontsize=11)
    return save_figure(fig, path)


def _message_figure(path, title: str, message: str) -> Path:
    fig = _new_figure(6.0, 1.6)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.4, message, ha="center", va="center", fontsize=10, wrap=True)
    return save_figure(fig, path)


@torch.no_grad()
def class_analogies(run, path, n_rows: int = 8, split: str | None = None) -> Path:
    """Kingma et al.'s analogies: each row a held-out image, then its style redrawn as every class."""
    split = split or figure_split(run)
    images, labels = run.images(split)
    images = images[across_classes(labels, n_rows)]
    redrawn = run.model.redraw(run.transform.fixed(images.to(run.device)))  # (B, C, *event)
    decoded = run.transform.to_images(redrawn.flatten(0, 1)).cpu().view(len(images), -1, *images.shape[1:])
    rows = torch.cat([_originals(images).unsqueeze(1), decoded], dim=1).flatten(0, 1)
    cols = ["orig."] + [str(c) for c in range(run.model.n_classes)]
    return _grid_figure(rows, run.model.n_classes + 1, f"Each {split} image's style z, decoded as every class y",
                        path, col_labels=cols, xlabel="original, then class y = 0, 1, ...")


@torch.no_grad()
def class_samples(run, path, n_rows: int = 8, seed: int = 0) -> Path:
    """One z ~ N(0, I) per row, decoded as every class (columns)."""
    model, device = run.model, run.device
    gen = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn((n_rows, model.latent_dim), generator=gen, device=device)
    classes = torch.arange(model.n_classes, device=device)
    means = model.likelihood.mean(model.decode(z.repeat_interleave(model.n_classes, 0), classes.repeat(n_rows)))
    images = run.transform.to_images(means).cpu()
    return _grid_figure(images, model.n_classes, "Samples by class: z ~ N(0, I) along each row, y along the columns",
                        path, col_labels=[str(c) for c in range(model.n_classes)])


# -- all of them ---------------------------------------------------------------------------------

def write_figures(run, out_dir, seed: int = 0, latents: Latents | None = None) -> dict[str, Path]:
    """Every figure of FIGURES into ``out_dir`` (created), as NAME.png; plus progress.gif
    when the run saved progress grids."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    latents = latents or encode_latents(run)
    rows = run.metrics()
    paths = {
        "samples": prior_samples(run, out / "samples.png", seed=seed),
        "reconstructions": reconstructions(run, out / "reconstructions.png", seed=seed),
        "analogies": analogies(run, out / "analogies.png", seed=seed),
        "manifold": manifold(run, out / "manifold.png", latents=latents),
        "latent_space": latent_space(latents, out / "latent_space.png"),
        "interpolation": interpolation(run, out / "interpolation.png"),
        "traversals": traversals(run, out / "traversals.png", latents=latents),
        "kl_per_dim": kl_per_dim(latents.kl_per_dim, latents.active, out / "kl_per_dim.png",
                                 title=f"KL per latent dimension on {latents.split} images: "
                                       f"{int(latents.active.sum())} of {len(latents.active)} active, "
                                       f"total {latents.kl_per_dim.sum():.2f} {NATS}"),
        "training_curves": training_curves(rows, out / "training_curves.png"),
        "latent_stats": latent_stats(read_step_stats(run.path) or rows, out / "latent_stats.png"),
        "progress": progress(run.path, out / "progress.png"),
    }
    if hasattr(run.model, "redraw"):  # a class variable y: its figures too
        paths["class_analogies"] = class_analogies(run, out / "class_analogies.png")
        paths["class_samples"] = class_samples(run, out / "class_samples.png", seed=seed)
    gif = Path(run.path) / PROGRESS_DIR / PROGRESS_GIF
    if gif.exists():
        paths["progress_gif"] = write_output(out / PROGRESS_GIF, gif.read_bytes())
    elif progress_frames(run.path):  # grids without their GIF: animate them here, not in the run
        paths["progress_gif"] = write_progress_gif(run.path, out / PROGRESS_GIF)
    return paths
