"""A finished (or interrupted) run, loaded from its directory alone: evaluate, sample,
reconstruct, encode."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .. import rundir
from ..config import Config
from ..devices import resolve_device
from ..errors import VaelabError
from ..evaluate import active_dims, evaluate_model
from ..images import decode_images
from ..families import build_model
from ..prepared_data import eval_images, train_val_rows
from . import validate
from .checkpoint import check_model_state, check_run_id, load_tensors, model_state, saved_transform
from ..transforms import make_transform


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


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

    def training_rows(self) -> tuple[torch.Tensor, np.ndarray]:
        """The uint8 images of the split the run trained on (data.train_split), and the rows of
        it that it trained on: its held-out validation rows excluded, in the run's own order."""
        images, _ = self.images(self.config.data.train_split)
        return images, train_val_rows(self.config.data, len(images))[0]

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
        bad = [k for k in ("elbo", "recon", "kl", "nll_iw") if result.get(k) is not None and not _finite(result[k])]
        if bad:  # never a nan printed as if it were a measurement
            raise VaelabError(f"the model's {', '.join(bad)} on {name} is not finite ({result[bad[0]]}): its weights "
                              f"({self.weights}) overflow on these images; use an earlier checkpoint (--which), "
                              f"or retrain")
        result.update(split=split, dataset=name)
        return result

    @torch.no_grad()
    def sample(self, n: int = 64, seed: int = 0) -> torch.Tensor:
        """n images from the prior, float in [0, 1], (n, C, H, W)."""
        self.model.eval()
        gen = torch.Generator(device=self.device).manual_seed(seed)
        images = self.transform.to_images(self.model.sample_prior(n, generator=gen)).cpu()
        if not bool(torch.isfinite(images).all()):
            raise VaelabError(f"samples of {self.path} are not finite: its weights ({self.weights}) overflow; use an "
                              f"earlier checkpoint, or retrain")
        return images

    @torch.no_grad()
    def decode(self, z, classes=None) -> torch.Tensor:
        """Images (decoder means) for latent codes z of shape (N, latent_dim), float in [0, 1];
        for a semi-supervised model, ``classes`` gives each code's class (default: the first)."""
        self.model.eval()
        z = torch.as_tensor(z, dtype=torch.float32)
        if z.dim() != 2 or z.shape[1] != self.model.latent_dim:
            raise VaelabError(f"z must have shape (N, {self.model.latent_dim}), got {tuple(z.shape)}")
        if classes is not None:
            n_classes = getattr(self.model, "n_classes", 0)
            classes = torch.as_tensor(classes, dtype=torch.long)
            if not n_classes:
                raise VaelabError(f"{self.path} has no classes to decode with")
            if classes.shape != (len(z),) or (len(z) and not 0 <= int(classes.min()) <= int(classes.max()) < n_classes):
                raise VaelabError(f"classes must be one class from 0 to {n_classes - 1} for each of the {len(z)} codes")
        images = decode_images(self.model, self.transform, z, classes).cpu()
        if not bool(torch.isfinite(images).all()):
            raise VaelabError(f"decoded images of {self.path} are not finite: its weights ({self.weights}) overflow "
                              f"at these codes; use an earlier checkpoint, or retrain")
        return images

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


#: model.json's fields and their types (a string, an int); older runs may lack some
_DESCRIPTION = {"format": "", "vaelab": "", "torch": "", "dataset": "", "transform": "", "latent_dim": 0,
                "likelihood": "", "variance": "", "encoder": "", "decoder": "", "family": "", "prior": "",
                "flow_steps": 0, "kl_method": "", "parameters": 0, "weights": "", "run_id": ""}
MAX_EVENT_SIZE = 2**26  # values in one example: 64 times a 1024x1024 RGB image


def read_description(path: Path) -> dict:
    """model.json, read and checked for types and sizes (not yet against config.json)."""
    where = path / rundir.MODEL_JSON
    description = validate.read_json(where, "model.json (the model's description)")
    if not isinstance(description, dict):
        raise VaelabError(f"{where} is not a model description (a JSON object); restore it or retrain")
    for key in ("event_shape", "image_shape"):
        shape = description.get(key)
        if not (isinstance(shape, list) and 1 <= len(shape) <= 4 and all(validate.is_int(d, 1) for d in shape)
                and _product(shape) <= MAX_EVENT_SIZE):
            raise VaelabError(f"{where}: {key} is missing or not a list of up to 4 positive sizes of at most "
                              f"{MAX_EVENT_SIZE:,} values in all ({shape!r:.60}); the run directory is damaged: "
                              f"restore {rundir.MODEL_JSON} or retrain")
    for key, kind in _DESCRIPTION.items():
        if key in description:
            validate.check_like(description[key], kind, f"{where}: {key}")
    return description


def _product(shape: list[int]) -> int:
    total = 1
    for d in shape:
        total *= d
    return total


def check_description(path: Path, config: Config, description: dict) -> None:
    """model.json says what the weights are; config.json how they were made. Both must
    agree, else numbers would be computed for another model (a VaelabError)."""
    where = path / rundir.MODEL_JSON
    pairs = (("dataset", config.data.name), ("transform", config.data.transform),
             ("likelihood", config.model.likelihood), ("latent_dim", config.model.latent_dim),
             ("encoder", config.model.encoder), ("decoder", config.model.decoder),
             ("family", config.model.family), ("prior", config.model.prior), ("flow_steps", config.model.flow_steps),
             ("variance", config.model.variance))
    for key, value in pairs:
        if key in description and description[key] != value:
            raise VaelabError(f"{where} says {key} {description[key]!r} but {rundir.CONFIG} says {value!r}: one of "
                              f"them was edited; restore it (the weights were trained as {rundir.MODEL_JSON} says)")
    if config.data.transform != "pca" and "image_shape" in description and config.data.transform != "m1" \
            and description["event_shape"] != description["image_shape"]:
        raise VaelabError(f"{where}: event_shape {description['event_shape']} differs from image_shape "
                          f"{description['image_shape']}, which only a PCA or M1 transform does; restore it or retrain")


def read_config(path: Path) -> Config:
    """config.json, checked exactly as a config a user gives (types, ranges, caps)."""
    where = path / rundir.CONFIG
    validate.read_bytes(where, validate.JSON_LIMIT, "config.json (the run's config)")  # a regular file, not huge
    try:
        return Config.load(where).validate()
    except VaelabError as exc:
        message = str(exc)
        raise VaelabError(message if str(where) in message else f"{where}: {message}") from None


def model_shapes(path: Path, config: Config, description: dict, event_shape: tuple[int, ...]) -> torch.nn.Module:
    """The config's model built on the meta device (shapes, no memory), checked against the
    parameter count model.json records: an edited config.json or model.json cannot make
    vaelab allocate a model other than the run's."""
    with torch.device("meta"):
        shapes = build_model(config.model, event_shape)
    count = sum(p.numel() for p in shapes.parameters())
    if "parameters" in description and description["parameters"] != count:
        raise VaelabError(f"{path / rundir.MODEL_JSON} says {description['parameters']:,} parameters, the model in "
                          f"{rundir.CONFIG} has {count:,}: one of them was edited; restore it, or retrain")
    return shapes


def load_run(path: str | Path, device: str = "cpu", which: str = "final", data_dir: str | Path | None = None) -> Run:
    """Load a run directory: ``which`` is final (model.safetensors), best or last (checkpoint).
    ``data_dir`` says where its dataset is now, in place of the folder it recorded."""
    path = Path(path)
    if not validate.regular_file(path / rundir.CONFIG) or not validate.regular_file(path / rundir.MODEL_JSON):
        raise VaelabError(f"{path} is not a vaelab run directory (expected {rundir.CONFIG} and {rundir.MODEL_JSON})")
    device = str(resolve_device(device))
    config = read_config(path)
    if data_dir is not None:
        config.data.data_dir = str(data_dir)
    description = read_description(path)
    check_description(path, config, description)
    weights = _weights_path(path, which)
    tensors, meta = load_tensors(weights)
    check_run_id(weights, meta, description.get("run_id"))
    transform = saved_transform(tensors)
    if (transform is not None) != (config.data.transform == "pca"):
        raise VaelabError(f"{weights} {'holds' if transform is not None else 'lacks'} a fitted PCA but the run's "
                          f"transform is {config.data.transform}: the file belongs to another run; restore it")
    event_shape = tuple(description["event_shape"])
    if transform is not None and event_shape != (transform.n_components,):
        raise VaelabError(f"{path / rundir.MODEL_JSON}: event_shape {list(event_shape)} but the saved PCA has "
                          f"{transform.n_components} components: restore it, or retrain")
    shapes = model_shapes(path, config, description, event_shape)
    check_model_state(shapes.state_dict(), model_state(tensors), str(weights))
    model = build_model(config.model, event_shape)
    model.load_state_dict(model_state(tensors))
    model.to(device).eval()
    if transform is not None:
        transform = transform.to(device)
    elif config.data.transform == "m1":
        transform = m1_codes(config.data.m1_run, device, config.data.m1_units)
    else:
        transform = make_transform(config.data.transform)
    return Run(path, config, description, model, transform, weights)


def m1_codes(path, device: str = "cpu", units: str = "all"):
    """The transform into the posterior codes of the run at ``path`` (M1 of M1+M2): all its
    latent units, or (``units="active"``) those active on its own training images."""
    from ..codes import M1Codes

    path = Path(path) if path else None
    if path is None or not (path / rundir.CONFIG).is_file():
        raise VaelabError(f"data.m1_run={path} is not a vaelab run directory: train M1 first (any unsupervised "
                          f"vaelab run, e.g. the mnist-m1 preset), then give its folder: --set data.m1_run=RUN_DIR")
    run = load_run(path, device=device)
    if getattr(run.model, "uses_labels", False):
        raise VaelabError(f"data.m1_run={path} is itself semi-supervised: give an unsupervised VAE run (M1)")
    if units == "all":
        return M1Codes(run)
    # M1's own training images, through its posterior means: no random draws, so every load
    # of the M2 run finds the same units
    images, rows = run.training_rows()
    kept = torch.nonzero(active_dims(run.encode(images[torch.from_numpy(rows)])[0])).flatten()
    if len(kept) == 0:
        raise VaelabError(f"data.m1_run={path} has no active latent units (its codes collapsed): retrain M1, or use "
                          f"data.m1_units=all")
    return M1Codes(run, kept.to(device))
