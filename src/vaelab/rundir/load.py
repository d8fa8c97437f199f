"""A finished (or interrupted) run, loaded from its directory alone: evaluate, sample,
reconstruct, encode."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import rundir
from ..config import Config
from ..devices import resolve_device
from ..errors import VaelabError
from ..evaluate import evaluate_model
from ..images import decode_images
from ..families import build_model
from ..prepared_data import eval_images
from .checkpoint import load_tensors, model_state, saved_transform
from ..transforms import make_transform


class Run:
    def __init__(self, path: Path, config: Config, description: dict, model: torch.nn.Module, transform,
                 weights: Path):
        self.path, self.config, self.description = path, config, description
        self.model, self.transform, self.weights = model, transform, weights
        self._images: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # split -> read once

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.description["image_shape"])

    def metrics(self) -> list[dict]:
        return rundir.read_metrics(self.path)

    def images(self, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and labels of a split of the run's dataset ('val': the held-out part).

        Read once per Run: a report's figures and statistics all ask for the same split.
        Callers must not change them in place.
        """
        if split not in self._images:
            self._images[split] = eval_images(self.config.data, split, self.transform)
        return self._images[split]

    def evaluate(self, split: str = "test", iw_samples: int = 100, limit: int = 0,
                 batch_size: int = 500, seed: int = 0, progress: bool = False, dataset: str | None = None,
                 images=None) -> dict:
        """Metrics (evaluate.evaluate_model) on a split of the run's dataset, of another
        ``dataset`` of the same image shape (e.g. an out-of-distribution check), or on given
        uint8 ``images`` (tensor or numpy)."""
        labels = None
        if images is not None:
            images, name, split = self._as_images(images), "given images", "given"
        elif dataset is not None:
            from ..data import load_dataset

            loaded = load_dataset(dataset, split, data_dir=self.config.data.data_dir)
            images, name = self._as_images(loaded.images), dataset
        else:
            (images, labels), name = self.images(split), self.config.data.name
        if limit:
            images = images[:limit]
            labels = labels[:limit] if labels is not None else None
        result = evaluate_model(self.model, self.transform, images, iw_samples=iw_samples,
                                batch_size=batch_size, seed=seed, progress=progress, labels=labels)
        result.update(split=split, dataset=name)
        return result

    @torch.no_grad()
    def sample(self, n: int = 64, seed: int = 0) -> torch.Tensor:
        """n images from the prior, float in [0, 1], (n, C, H, W)."""
        self.model.eval()
        gen = torch.Generator(device=self.device).manual_seed(seed)
        return self.transform.to_images(self.model.sample_prior(n, generator=gen)).cpu()

    @torch.no_grad()
    def decode(self, z) -> torch.Tensor:
        """Images (decoder means) for latent codes z of shape (N, latent_dim), float in [0, 1]."""
        self.model.eval()
        z = torch.as_tensor(z, dtype=torch.float32)
        if z.dim() != 2 or z.shape[1] != self.model.latent_dim:
            raise VaelabError(f"z must have shape (N, {self.model.latent_dim}), got {tuple(z.shape)}")
        return decode_images(self.model, self.transform, z).cpu()

    def _as_images(self, images) -> torch.Tensor:
        """uint8 (N, *image_shape) as a tensor: what load_dataset returns (numpy) or Run.images (torch)."""
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != self.image_shape:
            raise VaelabError(f"expected uint8 images of shape (N, {', '.join(map(str, self.image_shape))}), got "
                              f"{images.dtype} {tuple(images.shape)}")
        return images

    @torch.no_grad()
    def reconstruct(self, images, sample_posterior: bool = False, seed: int = 0) -> torch.Tensor:
        """Reconstructions of uint8 images (tensor or numpy), float in [0, 1]."""
        self.model.eval()
        images = self._as_images(images)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        x = self.transform.fixed(images.to(self.device))
        return self.transform.to_images(self.model.reconstruct(x, sample_posterior, gen)).cpu()

    @torch.no_grad()
    def encode(self, images, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior means and standard deviations of uint8 images (tensor or numpy). The means
        are the codes decode() takes (through a flow's steps; a hierarchy's top layer); the
        standard deviations are those of the Gaussian posterior q(z|x)."""
        self.model.eval()
        images = self._as_images(images)
        means, stds = [], []
        for start in range(0, len(images), batch_size):
            x = self.transform.fixed(images[start:start + batch_size].to(self.device))
            means.append(self.model.code(x).cpu())
            stds.append(self.model.encode(x).std.cpu())
        return torch.cat(means), torch.cat(stds)

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform.to_images(x)


def _weights_path(path: Path, which: str) -> Path:
    if which == "best":
        best = path / rundir.CHECKPOINTS / "best.safetensors"
        if best.exists():
            return best
    if which in ("final", "best") and (path / rundir.WEIGHTS).exists():
        return path / rundir.WEIGHTS
    checkpoints = rundir.checkpoint_paths(path)
    if checkpoints:
        return checkpoints[0]
    raise VaelabError(f"{path} has no weights yet (no {rundir.WEIGHTS} and no checkpoint): train it first")


def check_description(path: Path, config: Config, description) -> None:
    """model.json says what the weights are; config.json how they were made. Both must be
    whole and agree, else numbers would be computed for another model (a VaelabError)."""
    where = path / rundir.MODEL_JSON
    if not isinstance(description, dict):
        raise VaelabError(f"{where} is not a model description (a JSON object); restore it or retrain")
    for key in ("event_shape", "image_shape"):
        shape = description.get(key)
        if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d >= 1 for d in shape)):
            raise VaelabError(f"{where}: {key} is missing or not a list of positive sizes ({shape!r}); the run "
                              f"directory is damaged: restore {rundir.MODEL_JSON} or retrain")
    pairs = (("dataset", config.data.name), ("transform", config.data.transform),
             ("likelihood", config.model.likelihood), ("latent_dim", config.model.latent_dim),
             ("encoder", config.model.encoder), ("decoder", config.model.decoder),
             ("family", config.model.family), ("prior", config.model.prior), ("flow_steps", config.model.flow_steps))
    for key, value in pairs:
        if key in description and description[key] != value:
            raise VaelabError(f"{where} says {key} {description[key]!r} but {rundir.CONFIG} says {value!r}: one of "
                              f"them was edited; restore it (the weights were trained as {rundir.MODEL_JSON} says)")


def load_run(path: str | Path, device: str = "cpu", which: str = "final", data_dir: str | Path | None = None) -> Run:
    """Load a run directory: ``which`` is final (model.safetensors), best or last (checkpoint).
    ``data_dir`` says where its dataset is now, in place of the folder it recorded."""
    path = Path(path)
    if not (path / rundir.CONFIG).exists() or not (path / rundir.MODEL_JSON).exists():
        raise VaelabError(f"{path} is not a vaelab run directory (expected {rundir.CONFIG} and {rundir.MODEL_JSON})")
    device = str(resolve_device(device))
    config = Config.load(path / rundir.CONFIG)
    if data_dir is not None:
        config.data.data_dir = str(data_dir)
    try:
        description = json.loads((path / rundir.MODEL_JSON).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise VaelabError(f"{path / rundir.MODEL_JSON} is not valid JSON") from None
    check_description(path, config, description)
    weights = _weights_path(path, which)
    tensors, _ = load_tensors(weights)
    model = build_model(config.model, tuple(description["event_shape"]))
    try:
        model.load_state_dict(model_state(tensors))
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])[:300]
        raise VaelabError(f"{weights} does not match the model in {rundir.CONFIG} ({detail}); was "
                          f"{rundir.CONFIG} edited? restore it, or retrain") from None
    model.to(device).eval()
    transform = saved_transform(tensors)
    if transform is not None:
        transform = transform.to(device)
    elif config.data.transform == "m1":
        transform = m1_codes(config.data.m1_run, device)
    else:
        transform = make_transform(config.data.transform)
    return Run(path, config, description, model, transform, weights)


def m1_codes(path, device: str = "cpu"):
    """The transform into the posterior codes of the run at ``path`` (M1 of M1+M2)."""
    from ..codes import M1Codes

    path = Path(path) if path else None
    if path is None or not (path / rundir.CONFIG).is_file():
        raise VaelabError(f"data.m1_run={path} is not a vaelab run directory: train M1 first (any unsupervised "
                          f"vaelab run, e.g. the mnist-m1 preset), then give its folder: --set data.m1_run=RUN_DIR")
    run = load_run(path, device=device)
    if getattr(run.model, "uses_labels", False):
        raise VaelabError(f"data.m1_run={path} is itself semi-supervised: give an unsupervised VAE run (M1)")
    return M1Codes(run)
