"""The real pythae (0.1.2), where it is installed: its VAE around given networks, and its trainer.

pythae is not a dependency of vaelab; see README.md here for a separate venv that has it.
Everything in this module is only used when ``available()``; the benchmarks fall back to
their re-implementations otherwise and say so.

Two details of pythae 0.1.2 these wrappers follow (models/vae/vae_model.py):

- with ``reconstruction_loss="bce"`` the decoder must return probabilities: training and
  ``get_nll`` both score ``F.binary_cross_entropy(recon_x, x)``, which clamps each log term
  at -100 (so a pixel that a sigmoid rounds to exactly 0 or 1 in float32 costs 100 nats at
  most, where the logit form would give the exact value).
- ``get_nll(data, n_samples, batch_size)`` returns the mean of **log p(x)** (a negative
  number, despite its name), loops over the images one at a time, re-encodes each image
  repeated ``batch_size`` times for every batch of samples, uses ``max(n_samples //
  batch_size, 1) * batch_size`` samples, draws from the global torch RNG, and does not
  disable autograd itself.
"""

from __future__ import annotations

import copy
import random
import threading
import time

import torch
from torch import nn

try:  # pythae is optional
    import pythae
    from pythae.data.datasets import BaseDataset, DatasetOutput
    from pythae.models import VAE as PythaeVAE
    from pythae.models import VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback
except ImportError:  # pragma: no cover - depends on the environment
    pythae = None
    BaseEncoder = BaseDecoder = BaseDataset = TrainingCallback = object


def available() -> bool:
    return pythae is not None


def version() -> str:
    if pythae is None:
        return "not installed"
    try:
        from importlib.metadata import version as dist_version

        return dist_version("pythae")
    except Exception:  # noqa: BLE001 - only for the printout
        return getattr(pythae, "__version__", "unknown")


# -- evaluation: a pythae VAE computing what a vaelab VAE computes -----------------------------
class CopiedEncoder(BaseEncoder):
    """pythae encoder: a copy of a vaelab VAE's encoder and posterior head."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        BaseEncoder.__init__(self)
        self.body, self.head = encoder, head

    def forward(self, x):
        mean, logvar = self.head(self.body(x)).float().chunk(2, dim=-1)
        return ModelOutput(embedding=mean, log_covariance=logvar)


class CopiedBernoulliDecoder(BaseDecoder):
    """pythae decoder: a copy of a vaelab Bernoulli decoder; sigmoid probabilities, as pythae expects."""

    def __init__(self, decoder: nn.Module):
        BaseDecoder.__init__(self)
        self.body = decoder

    def forward(self, z):
        logits = self.body(z).float()[:, 0]  # (B, n_params=1, *event) -> (B, *event)
        return ModelOutput(reconstruction=torch.sigmoid(logits))


def pythae_vae_from_vaelab(model) -> "PythaeVAE":
    """A pythae VAE (custom encoder/decoder) whose weights are copies of vaelab ``model``'s."""
    if model.likelihood.name != "bernoulli":
        raise ValueError(f"pythae's get_nll has a Bernoulli (bce) or unit-variance Gaussian (mse) decoder; "
                         f"this model's likelihood is {model.likelihood.name}")
    config = VAEConfig(input_dim=tuple(model.event_shape), latent_dim=model.latent_dim, reconstruction_loss="bce")
    encoder = CopiedEncoder(copy.deepcopy(model.encoder), copy.deepcopy(model.posterior_head))
    decoder = CopiedBernoulliDecoder(copy.deepcopy(model.decoder))
    vae = PythaeVAE(config, encoder=encoder, decoder=decoder).eval()
    for p in vae.parameters():
        p.requires_grad_(True)  # as a trained pythae model has them (matters only with autograd on)
    return vae


# -- training: pythae's BaseTrainer on the anchor network --------------------------------
class PlainEncoder(BaseEncoder):
    """784-512-512 ReLU MLP and one linear head giving (mean, log-variance): plain torch layers."""

    def __init__(self, body: nn.Module, head: nn.Module):
        BaseEncoder.__init__(self)
        self.body, self.head = body, head

    def forward(self, x):
        mean, logvar = self.head(self.body(x)).chunk(2, dim=-1)
        return ModelOutput(embedding=mean, log_covariance=logvar)


class PlainDecoder(BaseDecoder):
    def __init__(self, body: nn.Module, event_shape):
        BaseDecoder.__init__(self)
        self.body, self.event_shape = body, tuple(event_shape)

    def forward(self, z):
        return ModelOutput(reconstruction=torch.sigmoid(self.body(z)).view(z.shape[0], *self.event_shape))


class DynamicBinarizedDataset(BaseDataset):
    """pythae BaseDataset over uint8 images; each access draws a fresh Bernoulli image (p = u/255).

    pythae has no dynamic binarization of its own (its pipelines take a fixed array); this is
    its documented extension point, indexed item by item by its DataLoader like BaseDataset.
    """

    def __init__(self, images_u8: torch.Tensor):
        BaseDataset.__init__(self, images_u8.float() / 255.0, torch.zeros(len(images_u8)))

    def __getitem__(self, index):
        return DatasetOutput(data=torch.bernoulli(self.data[index]), labels=self.labels[index])


class _Handover(TrainingCallback):
    def __init__(self, owner: "PythaeTraining"):
        self.owner = owner

    def on_epoch_end(self, training_config, **kwargs):
        self.owner._pause()


class PythaeTraining:
    """pythae's ``BaseTrainer.train()`` for a VAE, advanced one epoch per ``epoch()`` call.

    ``train()`` runs unmodified in a worker thread; a callback at each of its epoch ends
    hands control back and waits, so only one of the two threads computes at any time and
    the caller can interleave pythae's epochs with its own. The global torch / numpy /
    random RNG states (pythae seeds and draws from them) are swapped at every handover,
    so the caller's random streams are the same as without pythae. ``seconds`` is pythae's
    own time: the trainer's construction (DataLoader, sanity check), every epoch (its
    DataLoader, training steps, best-model copy, logging), and, after ``finish()``, saving
    the final model.
    """

    def __init__(self, build_model, images_u8: torch.Tensor, batch_size: int, epochs: int, lr: float,
                 out_dir: str, threads: int, cuda: bool = False):
        self.build_model, self.images_u8 = build_model, images_u8
        # built in the worker: BaseTrainerConfig's validation draws from the global RNG (an
        # nn.Linear(2, 2)), and it sets MASTER_ADDR / MASTER_PORT in os.environ
        self.config_args = dict(output_dir=out_dir, per_device_train_batch_size=batch_size, num_epochs=epochs,
                                learning_rate=lr, optimizer_cls="Adam", no_cuda=not cuda)
        self.threads = threads
        self.seconds = 0.0
        self.epochs_done = 0
        self.model = None
        self._go, self._paused = threading.Event(), threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._rng = None  # pythae's RNG states while it is paused
        self.finished = False

    # the worker thread
    def _work(self):
        try:
            torch.set_num_threads(self.threads)  # OpenMP settings are per thread
            torch.set_flush_denormal(False)  # pythae leaves torch's default
            config = BaseTrainerConfig(**self.config_args)
            self.model = self.build_model()
            dataset = DynamicBinarizedDataset(self.images_u8)
            trainer = BaseTrainer(self.model, dataset, training_config=config, callbacks=[_Handover(self)])
            trainer.train()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            self._error = e
        finally:
            self.finished = True
            self._paused.set()

    def _pause(self):
        self._paused.set()
        self._go.wait()
        self._go.clear()

    @staticmethod
    def _rng_states():
        import numpy as np

        return torch.get_rng_state(), np.random.get_state(), random.getstate()

    @staticmethod
    def _set_rng_states(states):
        import numpy as np

        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])

    def _run_until_pause(self) -> float:
        mine = self._rng_states()
        if self._rng is not None:
            self._set_rng_states(self._rng)
        self._paused.clear()
        start = time.perf_counter()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="pythae-trainer", daemon=True)
            self._thread.start()
        else:
            self._go.set()
        self._paused.wait()
        seconds = time.perf_counter() - start
        self._rng = self._rng_states()
        self._set_rng_states(mine)
        if self._error is not None:
            raise RuntimeError(f"pythae training failed: {self._error!r}") from self._error
        self.seconds += seconds
        return seconds

    def epoch(self) -> float:
        """One more pythae epoch (the first includes building the trainer); its seconds."""
        if self.finished:
            raise RuntimeError("pythae training already finished")
        seconds = self._run_until_pause()
        self.epochs_done += 1
        return seconds

    def finish(self) -> float:
        """Let train() run to its end (logging, saving the final model); the seconds it took."""
        if self._thread is None or self.finished:
            return 0.0
        seconds = self._run_until_pause()
        self._thread.join()
        return seconds

    def params(self) -> list[torch.Tensor]:
        """Encoder then decoder parameters, in the order of a vaelab VAE of the same shape."""
        return list(self.model.encoder.parameters()) + list(self.model.decoder.parameters())


def anchor_model(ref_config, event_shape, seed: int):
    """pythae VAE of the anchor model: the hand-written network of train_throughput.build_reference."""
    from train_throughput import build_reference

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        enc, head, dec = build_reference(ref_config, tuple(event_shape))
    config = VAEConfig(input_dim=tuple(event_shape), latent_dim=ref_config.model.latent_dim, reconstruction_loss="bce")
    return PythaeVAE(config, encoder=PlainEncoder(enc, head), decoder=PlainDecoder(dec, event_shape))
