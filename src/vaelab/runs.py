"""A finished (or interrupted) run, loaded from its directory alone: evaluate, sample,
reconstruct, encode."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import rundir
from .config import Config
from .errors import VaelabError
from .evaluate import evaluate_model
from .model import VAE
from .pca import PCATransform
from .pipeline import eval_images
from .train.checkpoint import load_tensors
from .transforms import make_transform


class Run:
    def __init__(self, path: Path, config: Config, description: dict, model: VAE, transform,
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
                 batch_size: int = 500, seed: int = 0, progress: bool = False) -> dict:
        images, _ = self.images(split)
        if limit:
            images = images[:limit]
        result = evaluate_model(self.model, self.transform, images, iw_samples=iw_samples,
                                batch_size=batch_size, seed=seed, progress=progress)
        result.update(split=split, dataset=self.config.data.name)
        return result

    @torch.no_grad()
    def sample(self, n: int = 64, seed: int = 0) -> torch.Tensor:
        """n images from the prior, float in [0, 1], (n, C, H, W)."""
        self.model.eval()
        gen = torch.Generator(device=self.device).manual_seed(seed)
        return self.transform.to_images(self.model.sample_prior(n, generator=gen)).cpu()

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, sample_posterior: bool = False, seed: int = 0) -> torch.Tensor:
        """Reconstructions of uint8 images, float in [0, 1]."""
        self.model.eval()
        gen = torch.Generator(device=self.device).manual_seed(seed)
        x = self.transform.fixed(images.to(self.device))
        return self.transform.to_images(self.model.reconstruct(x, sample_posterior, gen)).cpu()

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior means and standard deviations of uint8 images."""
        self.model.eval()
        means, stds = [], []
        for start in range(0, len(images), batch_size):
            x = self.transform.fixed(images[start:start + batch_size].to(self.device))
            q = self.model.encode(x)
            means.append(q.mean.cpu())
            stds.append(q.std.cpu())
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


def load_run(path: str | Path, device: str = "cpu", which: str = "final") -> Run:
    """Load a run directory: ``which`` is final (model.safetensors), best or last (checkpoint)."""
    path = Path(path)
    if not (path / rundir.CONFIG).exists() or not (path / rundir.MODEL_JSON).exists():
        raise VaelabError(f"{path} is not a vaelab run directory (expected {rundir.CONFIG} and {rundir.MODEL_JSON})")
    config = Config.load(path / rundir.CONFIG)
    try:
        description = json.loads((path / rundir.MODEL_JSON).read_text())
    except json.JSONDecodeError:
        raise VaelabError(f"{path / rundir.MODEL_JSON} is not valid JSON") from None
    weights = _weights_path(path, which)
    tensors, _ = load_tensors(weights)
    model = VAE(config.model, tuple(description["event_shape"]))
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise VaelabError(f"{weights} does not match the model in {rundir.CONFIG}: {str(exc).splitlines()[0]}") from None
    model.to(device).eval()
    if "pca.components" in tensors:
        transform = PCATransform.from_state(tensors).to(device)
    else:
        transform = make_transform(config.data.transform)
    return Run(path, config, description, model, transform, weights)
