"""Typed configuration: presets, config files, ``--set key=value`` overrides, validation.

A Config is three plain dataclasses (data, model, train). Every key can be set from the
command line as ``section.key=value``; unknown keys get a "did you mean" suggestion and
bad values one clear line, both as :class:`VaelabError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import VaelabError

TRANSFORMS = ("binarize-dynamic", "binarize-static", "scale", "pca", "m1")
NETWORKS = ("mlp", "conv", "resnet")
FAMILIES = ("vae", "ladder", "m2")  # families.FAMILIES builds each
KL_SCHEDULES = ("constant", "linear", "cyclical", "ae-then-anneal")
OBJECTIVES = ("elbo", "iwae")
LR_SCHEDULES = ("constant", "cosine", "step", "plateau")
EARLY_STOPPING = ("none", "val", "train")
NAN_POLICIES = ("raise", "skip", "rollback")
AUTOCAST = ("off", "bf16")
LAYOUTS = ("auto", "on", "off")
STORES = ("memory", "memmap")

#: caps on what nobody can mean: each would allocate gigabytes or start a million threads
MAX_LATENT_DIM = 10_000
MAX_WIDTH = 65_536  # a layer's width, channels or IAF/ladder size
MAX_THREADS = 1024
MAX_RATE = 1e6  # train.lr and train.weight_decay: far past any that trains, short of overflowing a step
MAX_FREE_BITS = 1e6  # nats per latent dimension: far past any useful floor, inside float32 (the KL is clamped to it)
MAX_SEED = 2**32 - 1  # every generator vaelab seeds (torch, NumPy) takes it


#: keys that say where and how a run ran or what it kept, not what it trained: two configs that
#: differ only in these describe the same experiment (a sweep or a finding reuses such a run)
RUN_ONLY_KEYS = frozenset({"data.data_dir", "data.download", "train.device", "train.threads",
                           "train.keep_checkpoints", "train.checkpoint_every", "train.sample_every",
                           "train.tensorboard", "train.mlflow"})


@dataclass
class DataConfig:
    name: str = "mnist"
    data_dir: str | None = None  # None: $VAELAB_DATA, else the per-user cache
    download: bool = False
    store: str = "memory"  # memory: load the split; memmap: read its prepared store (vaelab data prepare)
    train_split: str = "train"  # the split trained on; validation is held out of it
    transform: str = "binarize-dynamic"
    dequantize: bool = False  # scale: train on (u + U(-1/2, 1/2)) / 255, for densities with a learned variance
    val_fraction: float = 0.1  # held out of train for validation
    limit: int = 0  # use only a fixed random subset of N training images (0: all); for smoke runs
    image_size: int | None = None  # folder datasets: resize to this square side
    channels: int | None = None  # folder datasets: 1 (grey) or 3 (RGB)
    pca_components: int = 500
    pca_fit_images: int = 10000  # shuffled training images the PCA is fitted on (0: all, a chunk at a time)
    pca_whiten: bool = False
    labelled: int = 0  # semi-supervised families: a seeded, class-balanced subset of N labelled training images
    m1_run: str | None = None  # data.transform=m1: the run directory whose posterior codes are the data (M1+M2)
    m1_units: str = "all"  # data.transform=m1: all of M1's latent units, or only its active ones ("active")


@dataclass
class ModelConfig:
    latent_dim: int = 20
    encoder: str = "mlp"
    decoder: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [500, 500])  # encoder MLP layers
    decoder_hidden: list[int] | None = None  # None: the encoder's, reversed
    variance_hidden: list[int] | None = None  # MLP decoder: a separate stack for the variance map (None: shared)
    activation: str = "relu"
    batch_norm: bool = False
    dropout: float = 0.0
    conv_channels: list[int] = field(default_factory=lambda: [32, 64])
    conv_kernels: list[int] = field(default_factory=lambda: [4, 4])
    conv_strides: list[int] = field(default_factory=lambda: [2, 2])
    conv_dense: int = 256
    res_width: int = 64  # resnet networks: channels of every residual block
    res_blocks: int = 2  # resnet networks: residual blocks at each of the two scales
    likelihood: str = "bernoulli"
    variance: str = "fixed"  # gaussian only: fixed | learned-logvar | relu | softplus | shared
    sigma: float = 1.0  # gaussian with fixed variance: the standard deviation
    variance_eps: float = 1e-4  # relu / softplus variance: the floor added
    logvar_init_bias: float = 0.0
    variance_l2: float = 0.0
    sigmoid_mean: bool = False
    n_mixtures: int = 5
    family: str = "vae"  # vae | ladder (a top-down hierarchy, Sønderby et al. 2016) | m2 (semi-supervised, Kingma et al. 2014)
    n_classes: int = 10  # m2: the classes of y
    prior: str = "standard-normal"  # standard-normal | mog (learned mixture) | vamp (Tomczak & Welling 2018)
    prior_components: int = 500  # mog: mixture components; vamp: pseudo-inputs
    flow_steps: int = 0  # inverse autoregressive flow steps on the posterior (Kingma et al. 2016; 0: none)
    flow_hidden: list[int] = field(default_factory=lambda: [320, 320])  # each IAF step's MADE widths
    ladder_dims: list[int] = field(default_factory=lambda: [64])  # ladder: the lower layers' sizes, bottom first
    ladder_depth: int = 2  # ladder: hidden layers per deterministic block


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"  # auto: cuda when present, else cpu
    threads: int = 0  # CPU threads for torch (0: torch's default)
    objective: str = "elbo"
    iw_samples: int = 1  # k for the IWAE objective
    beta: float = 1.0  # the KL weight (0: a plain autoencoder)
    kl_schedule: str = "constant"
    warmup_epochs: int = 10  # linear: epochs from 0 to beta; cyclical: the rising part of a cycle
    cycle_epochs: int = 20  # cyclical: the length of one cycle
    anneal_step: float = 0.05  # ae-then-anneal: the weight's rise per epoch (spread over its steps), capped at beta
    anneal_start_rel: float = 0.01  # ae-then-anneal: start once an epoch improves the reconstruction by less than this fraction
    # ae-then-anneal, > 0: when the rise starts, lower its cap from beta to the weight at which what the
    # autoencoder explains (its gain over the mean image, in nats) is worth this many nats (Gaussian, fixed variance)
    anneal_code_nats: float = 0.0
    free_bits: float = 0.0  # nats per latent dimension (0: off)
    labelled_batch: int = 100  # semi-supervised: labelled images added to every batch
    class_weight: float = 0.1  # semi-supervised: alpha / N of the classification term (Kingma: alpha = 0.1 N)
    labelled_weight: float = 1.0  # semi-supervised: a labelled image's bound weighed as this many unlabelled ones (Kingma: 1)
    entropy_weight: float = 1.0  # semi-supervised: the weight of H(q(y|x)) in the unlabelled bound trained on (Kingma: 1)
    grad_clip: float = 0.0  # max gradient norm (0: off)
    lr_schedule: str = "constant"
    lr_step_epochs: int = 30
    lr_gamma: float = 0.5
    early_stopping: str = "none"
    patience: int = 10
    min_delta: float = 0.0
    checkpoint_every: int = 1  # epochs
    keep_checkpoints: int = 1  # the newest last-*.safetensors kept (with best.safetensors)
    nan_policy: str = "raise"
    nan_check_every: int = 0  # steps between NaN-guard checks (0: every step on CPU, 50 on CUDA: no per-step sync)
    autocast: str = "off"  # bf16: networks run in bfloat16 autocast (weights, optimizer and losses stay fp32)
    compile: bool = False  # torch.compile the training loss (networks, likelihood, KL) and the binarization
    channels_last: str = "auto"  # conv networks in channels_last layout (auto: on for conv models)
    log_latent_stats: bool = True  # per-epoch spread of posterior means / stds on a fixed batch
    sample_every: int = 0  # epochs between fixed-noise sample grids in RUN_DIR/progress/ (0: off)
    stats_every_steps: int = 0  # steps between latent statistics + sample grids in RUN_DIR/progress/ (0: off)
    tensorboard: bool = False  # TensorBoard scalars and image grids in RUN_DIR/tensorboard/
    mlflow: bool = False  # log config, metrics and figures to MLflow (vaelab.tracking; pip install 'vaelab[mlflow]')


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str | None = None  # the preset this config started from, for the record

    # -- conversion ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> "Config":
        cfg = cls()
        if not isinstance(raw, dict):
            raise VaelabError(f"{source}: expected a mapping of sections (data, model, train)")
        for key, value in raw.items():
            if key == "preset":
                cfg.preset = value
                continue
            if isinstance(value, dict):
                for sub, subvalue in value.items():
                    cfg.set(f"{key}.{sub}", subvalue, source=source)
            else:
                cfg.set(key, value, source=source)
        return cfg

    def copy(self) -> "Config":
        return Config.from_dict(self.to_dict())

    # -- overrides ----------------------------------------------------------------------
    def set(self, key: str, value, source: str = "--set") -> None:
        """Set ``section.name`` to ``value`` (a string from the command line is parsed)."""
        section_name, _, name = key.partition(".")
        if section_name not in _type_hints(Config) or section_name == "preset" or not name:
            raise VaelabError(f"{source}: unknown config key {key!r}{_suggest(key, all_keys())}")
        section = getattr(self, section_name)
        hints = _type_hints(type(section))  # the section's fields and their types
        if name not in hints:
            raise VaelabError(f"{source}: unknown config key {key!r}{_suggest(key, all_keys())}")
        setattr(section, name, _coerce(value, hints[name], key, source))

    def apply_overrides(self, assignments: list[str] | str) -> None:
        """``key=value`` strings, as --set takes them; one string is one assignment."""
        if isinstance(assignments, str):
            assignments = [assignments]
        for item in assignments:
            key, sep, value = item.partition("=")
            if not sep:
                raise VaelabError(f"--set expects key=value, got {item!r} (e.g. --set train.epochs=5)")
            self.set(key.strip(), value.strip())

    # -- validation ---------------------------------------------------------------------
    def validate(self) -> "Config":
        data, model, train = self.data, self.model, self.train
        _all_finite(self)
        _choice("data.transform", data.transform, TRANSFORMS)
        _choice("data.store", data.store, STORES)
        _choice("data.m1_units", data.m1_units, ("all", "active"))
        if not (isinstance(data.train_split, str) and data.train_split.strip()):
            raise VaelabError(f"data.train_split must name a split such as train or extra, got {data.train_split!r}")
        if data.store == "memmap" and data.transform == "binarize-static":
            raise VaelabError("data.transform=binarize-static draws the whole split at once in memory: with "
                              "data.store=memmap use binarize-dynamic (or data.store=memory)")
        if data.dequantize and data.transform != "scale":
            raise VaelabError(f"data.dequantize spreads 8-bit pixels over their bins: it needs data.transform=scale, "
                              f"not {data.transform}")
        _range("data.val_fraction", data.val_fraction, 0.0, 0.9)
        _at_least("data.limit", data.limit, 0)
        if data.image_size is not None:
            _at_least("data.image_size", data.image_size, 2)
        if data.channels is not None and data.channels not in (1, 3):
            raise VaelabError(f"data.channels must be 1 or 3, got {data.channels}")
        _at_least("data.pca_components", data.pca_components, 1)
        _at_least("data.pca_fit_images", data.pca_fit_images, 0)
        _at_least("model.latent_dim", model.latent_dim, 1)
        _at_most("model.latent_dim", model.latent_dim, MAX_LATENT_DIM)
        _choice("model.encoder", model.encoder, NETWORKS)
        _choice("model.decoder", model.decoder, NETWORKS)
        self._validate_family()
        if model.variance_hidden is not None and (model.decoder != "mlp" or model.likelihood != "gaussian"
                                              or model.variance in ("fixed", "shared")):
            raise VaelabError("model.variance_hidden is a separate MLP stack for a per-image variance map: it needs "
                              "model.decoder=mlp, model.likelihood=gaussian and model.variance=learned-logvar, "
                              "relu or softplus; or leave it unset (null)")
        for name in ("hidden", "decoder_hidden", "variance_hidden", "conv_channels", "conv_kernels", "conv_strides"):
            for v in getattr(model, name) or []:
                _at_least(f"model.{name} entries", v, 1)
                _at_most(f"model.{name} entries", v, MAX_WIDTH)
        _range("model.dropout", model.dropout, 0.0, 0.99)
        if "resnet" in (model.encoder, model.decoder):
            _at_least("model.res_width", model.res_width, 1)
            _at_most("model.res_width", model.res_width, MAX_WIDTH)
            _at_least("model.res_blocks", model.res_blocks, 0)
            _at_most("model.res_blocks", model.res_blocks, 64)
            if model.family != "vae" or model.batch_norm or model.dropout:
                raise VaelabError("the resnet networks serve model.family=vae without batch norm or dropout: set "
                                  "model.family=vae, model.batch_norm=false and model.dropout=0, or use conv networks")
        if data.transform in ("pca", "m1") and (model.encoder != "mlp" or model.decoder != "mlp"):
            raise VaelabError(f"data.transform={data.transform} gives vectors, not images: use model.encoder=mlp and "
                              f"model.decoder=mlp")
        if data.m1_run and data.transform != "m1":  # (a preset leaves data.m1_run to the user: training asks for it)
            raise VaelabError("data.m1_run names the VAE (M1) whose codes are the data: it needs data.transform=m1")
        if data.m1_units != "all" and data.transform != "m1":
            raise VaelabError("data.m1_units chooses which of M1's latent units M2 sees: it needs data.transform=m1")
        if data.transform == "m1" and (model.likelihood != "gaussian" or data.store != "memory"):
            raise VaelabError("data.transform=m1 gives real-valued codes held in memory: use model.likelihood=gaussian "
                              "and data.store=memory")
        _at_least("train.epochs", train.epochs, 0)
        _at_least("train.batch_size", train.batch_size, 1)
        if not (train.lr > 0 and math.isfinite(train.lr)):
            raise VaelabError(f"train.lr must be a positive number, got {train.lr} (e.g. --set train.lr=1e-3)")
        if len(train.betas) != 2 or not all(0 <= b < 1 for b in train.betas):
            raise VaelabError(f"train.betas must be two numbers in [0, 1), got {train.betas}")
        _at_least("train.weight_decay", train.weight_decay, 0.0)
        _at_most("train.lr", train.lr, MAX_RATE)
        _at_most("train.weight_decay", train.weight_decay, MAX_RATE)
        _at_least("train.threads", train.threads, 0)
        _at_most("train.threads", train.threads, MAX_THREADS)
        _at_least("train.seed", train.seed, 0)
        _at_most("train.seed", train.seed, MAX_SEED)
        _choice("train.objective", train.objective, OBJECTIVES)
        _at_least("train.iw_samples", train.iw_samples, 1)
        _at_least("train.beta", train.beta, 0.0)
        _choice("train.kl_schedule", train.kl_schedule, KL_SCHEDULES)
        _at_least("train.warmup_epochs", train.warmup_epochs, 1)
        _at_least("train.cycle_epochs", train.cycle_epochs, 1)
        _at_least("train.anneal_step", train.anneal_step, 0.0)
        _range("train.anneal_start_rel", train.anneal_start_rel, 0.0, 1.0)
        _at_least("train.anneal_code_nats", train.anneal_code_nats, 0.0)
        _at_least("train.free_bits", train.free_bits, 0.0)
        _at_most("train.free_bits", train.free_bits, MAX_FREE_BITS)
        _at_least("train.grad_clip", train.grad_clip, 0.0)
        _choice("train.lr_schedule", train.lr_schedule, LR_SCHEDULES)
        _at_least("train.lr_step_epochs", train.lr_step_epochs, 1)
        _range("train.lr_gamma", train.lr_gamma, 1e-6, 1.0)
        _choice("train.early_stopping", train.early_stopping, EARLY_STOPPING)
        _at_least("train.patience", train.patience, 1)
        # combinations that would silently do something other than what was asked
        if train.kl_schedule == "cyclical" and train.warmup_epochs > train.cycle_epochs:
            raise VaelabError(f"train.warmup_epochs={train.warmup_epochs} exceeds train.cycle_epochs={train.cycle_epochs}: "
                              f"the cyclical KL weight would never reach train.beta")
        if train.objective == "iwae" and (train.beta != 1 or train.kl_schedule != "constant" or train.free_bits > 0):
            raise VaelabError("train.objective=iwae bounds log p(x) and has no KL weight: leave train.beta=1, "
                              "train.kl_schedule=constant and train.free_bits=0")
        if train.objective == "iwae" and model.variance_l2 > 0:
            raise VaelabError("model.variance_l2 applies to the ELBO objective only: set it to 0 with train.objective=iwae")
        if train.anneal_code_nats > 0 and (train.kl_schedule != "ae-then-anneal" or model.likelihood != "gaussian"
                                           or model.variance != "fixed" or data.transform != "scale"):
            raise VaelabError("train.anneal_code_nats sets the cap of train.kl_schedule=ae-then-anneal from the "
                              "squared error of a Gaussian decoder with fixed variance on the images: it needs "
                              "model.likelihood=gaussian, model.variance=fixed and data.transform=scale (or set it to 0)")
        if data.val_fraction == 0 and train.kl_schedule == "ae-then-anneal":
            raise VaelabError("train.kl_schedule=ae-then-anneal starts on the validation reconstruction error, but "
                              "data.val_fraction=0 holds out no images: raise it (e.g. 0.1)")
        if data.val_fraction == 0 and (train.early_stopping == "val" or
                                    (train.lr_schedule == "plateau" and train.early_stopping != "train")):
            raise VaelabError("the validation loss is monitored (train.early_stopping=val or train.lr_schedule=plateau) "
                              "but data.val_fraction=0 holds out no images: raise it, or use train.early_stopping=train")
        _at_least("train.checkpoint_every", train.checkpoint_every, 1)
        _at_least("train.keep_checkpoints", train.keep_checkpoints, 1)
        _choice("train.nan_policy", train.nan_policy, NAN_POLICIES)
        _at_least("train.nan_check_every", train.nan_check_every, 0)
        _choice("train.autocast", train.autocast, AUTOCAST)
        _choice("train.channels_last", train.channels_last, LAYOUTS)
        _at_least("train.sample_every", train.sample_every, 0)
        _at_least("train.stats_every_steps", train.stats_every_steps, 0)
        if train.device not in ("auto", "cpu") and not train.device.startswith("cuda"):
            raise VaelabError(f"train.device must be auto, cpu, cuda or cuda:N, got {train.device!r}")
        # the likelihood module checks its own names and values
        from .likelihoods import likelihood_from_config

        likelihood_from_config(model, (3, 1, 1))  # a shape every likelihood takes (the RGB one needs 3 channels)
        if model.likelihood.startswith("discretized") and data.transform != "scale":
            raise VaelabError(f"model.likelihood={model.likelihood} models 8-bit pixels: use data.transform=scale")
        return self

    def _validate_semi_supervised(self) -> None:
        data, model, train = self.data, self.model, self.train
        _at_least("model.n_classes", model.n_classes, 2)
        if data.labelled < model.n_classes:
            raise VaelabError(f"model.family=m2 learns from labels: set data.labelled to at least one image per class "
                              f"({model.n_classes}), e.g. data.labelled=100")
        _at_least("train.labelled_batch", train.labelled_batch, 1)
        _at_least("train.class_weight", train.class_weight, 0.0)
        _at_least("train.labelled_weight", train.labelled_weight, 0.0)
        if not 0.0 <= train.entropy_weight <= 1.0:  # outside [0, 1] the bound trained on is no bound on log p(x)
            raise VaelabError(f"train.entropy_weight must be between 0 and 1 (the unlabelled bound's entropy term, "
                              f"weighted, stays a lower bound on log p(x)), got {train.entropy_weight}")
        if model.prior != "standard-normal" or model.flow_steps:
            raise VaelabError("model.family=m2 has an N(0, I) prior on z and no flow: set model.prior=standard-normal "
                              "and model.flow_steps=0")
        if train.objective != "elbo":
            raise VaelabError("model.family=m2 trains on its ELBO: set train.objective=elbo")
        if model.variance_l2 > 0:
            raise VaelabError("model.variance_l2 is not used by model.family=m2: set it to 0")
        if train.free_bits > 0:
            raise VaelabError("model.family=m2 has no free bits: set train.free_bits=0")

    def _validate_family(self) -> None:
        """The model family, its prior, flow and layers (model.family, model.prior, ...)."""
        from .latent.priors import PRIORS

        model = self.model
        _choice("model.family", model.family, FAMILIES)
        _choice("model.prior", model.prior, PRIORS)
        _at_least("model.prior_components", model.prior_components, 1)
        _at_least("model.flow_steps", model.flow_steps, 0)
        if model.flow_steps and not model.flow_hidden:
            raise VaelabError("model.flow_hidden must list at least one width for the IAF steps, e.g. [320, 320]")
        for v in model.flow_hidden + model.ladder_dims:
            _at_least("model.flow_hidden and model.ladder_dims entries", v, 1)
            _at_most("model.flow_hidden and model.ladder_dims entries", v, MAX_WIDTH)
        if model.prior == "vamp" and model.batch_norm:
            raise VaelabError("model.prior=vamp runs the encoder on its pseudo-inputs at every step, which would mix "
                              "them into batch norm's statistics: set model.batch_norm=false")
        if model.prior == "vamp" and self.data.transform in ("pca", "m1"):
            raise VaelabError("model.prior=vamp learns pseudo-inputs in image space [0, 1]: use data.transform=scale "
                              "or a binarization, not pca")
        if model.family == "m2":
            self._validate_semi_supervised()
        elif self.data.labelled:
            raise VaelabError(f"data.labelled applies to the semi-supervised family (model.family=m2), not "
                              f"{model.family}: set data.labelled=0 (the M1 probes are `vaelab eval --probe-labels N`)")
        if model.family != "ladder":
            return
        _at_least("model.ladder_depth", model.ladder_depth, 1)
        if not model.ladder_dims:
            raise VaelabError("model.family=ladder needs model.ladder_dims, the lower layers' sizes, e.g. [64]")
        if model.flow_steps:
            raise VaelabError("model.family=ladder has no flow steps: set model.flow_steps=0")
        if len(model.hidden) != len(model.ladder_dims) + 1:
            raise VaelabError(f"model.family=ladder takes one model.hidden width per stochastic layer "
                              f"({len(model.ladder_dims) + 1}), got {model.hidden}")
        if model.encoder != model.decoder:
            raise VaelabError("model.family=ladder uses one network kind for both directions: set model.encoder and "
                              "model.decoder alike (mlp or conv)")

    # -- files --------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        from .atomicio import atomic_write_bytes

        atomic_write_bytes(Path(path), (json.dumps(self.to_dict(), indent=2) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        path = Path(path)
        if not path.is_file():
            raise VaelabError(f"config file {path} does not exist")
        from .rundir.validate import JSON_LIMIT, read_bytes

        try:
            text = read_bytes(path, JSON_LIMIT, "a config file").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise VaelabError(f"config file {path} is not UTF-8 text (byte {exc.start} is invalid)") from None
        except OSError as exc:
            raise VaelabError(f"cannot read config file {path}: {exc.strerror or exc}") from None
        try:
            if path.suffix == ".toml":
                try:
                    import tomllib
                except ModuleNotFoundError:  # Python 3.10
                    import tomli as tomllib
                raw = tomllib.loads(text)
            else:
                raw = json.loads(text)
        except Exception as exc:  # json / toml syntax errors
            raise VaelabError(f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: "
                              f"{str(exc).splitlines()[0]}") from None
        return cls.from_dict(raw, source=str(path))


@functools.lru_cache(maxsize=None)
def _type_hints(section: type) -> dict:
    """A section's field types, worked out once: typing.get_type_hints re-evaluates every
    annotation on each call, which made loading a config cost milliseconds per key."""
    return typing.get_type_hints(section)


def all_keys() -> list[str]:
    cfg = Config()
    return [f"{s}.{f.name}" for s in ("data", "model", "train")
            for f in dataclasses.fields(getattr(cfg, s))]


def describe_keys() -> list[tuple[str, str, object]]:
    """(key, type, default) for every config key: README and `vaelab config` list them."""
    cfg = Config()
    out = []
    for s in ("data", "model", "train"):
        section = getattr(cfg, s)
        hints = _type_hints(type(section))
        for f in dataclasses.fields(section):
            out.append((f"{s}.{f.name}", _type_name(hints[f.name]), getattr(section, f.name)))
    return out


# -- helpers ------------------------------------------------------------------------------

def _suggest(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.5)
    if not close:
        # also try matching the last part alone (e.g. "latent_dims" -> model.latent_dim)
        tail = key.rpartition(".")[2]
        by_tail = {c.rpartition(".")[2]: c for c in choices}
        close = [by_tail[t] for t in difflib.get_close_matches(tail, list(by_tail), n=1, cutoff=0.6)]
    return f" (did you mean {close[0]}?)" if close else " (run `vaelab config` to list the keys)"


def _type_name(hint) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is list:
        return f"list[{args[0].__name__}]"
    if args:
        return _type_name(args[0]) + " | None"
    return getattr(hint, "__name__", str(hint))


def _coerce(value, hint, key: str, source: str):
    """Turn ``value`` (often a command-line string) into the type ``hint`` names."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))):
        return None
    if optional:
        return _coerce(value, args[0], key, source)
    if origin is list:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except (json.JSONDecodeError, RecursionError):  # RecursionError: '[[[[...' nested too deep
                    raise VaelabError(f"{source}: {key} expects a list like 500,500, got {value!r}") from None
            else:
                value = [v for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise VaelabError(f"{source}: {key} expects a list like 500,500, got {value!r}")
        return [_coerce(v, args[0], key, source) for v in value]
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, bool):
                raise ValueError
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):  # nan and inf alike: one message, naming the key
                raise VaelabError(f"{source}: {key} must be a finite number, got {value!r}")
            return number
        if hint is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: float() of a 400-digit int
        pass
    else:
        return value
    raise VaelabError(f"{source}: {key} expects {_type_name(hint)}, got {value!r}")


def _all_finite(config: "Config") -> None:
    """No setting is infinite (JSON and TOML can spell inf; the checks below would let some through)."""
    for section in ("data", "model", "train"):
        for name, value in dataclasses.asdict(getattr(config, section)).items():
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise VaelabError(f"{section}.{name} must be a finite number, got {value}")


def _choice(key, value, choices):
    if value not in choices:
        raise VaelabError(f"{key} must be one of {', '.join(choices)}; got {value!r}"
                          f"{_suggest(str(value), list(choices)) if difflib.get_close_matches(str(value), choices, 1, 0.5) else ''}")


def _at_least(key, value, low):
    if value < low:
        raise VaelabError(f"{key} must be at least {low}, got {value}")


def _at_most(key, value, high):
    """Sizes nobody means (a typo, an extra zero) are refused before anything is allocated."""
    if value > high:
        raise VaelabError(f"{key} must be at most {high:,}, got {value:,} (a size this large cannot be meant: "
                          f"check for a typo)")


def _range(key, value, low, high):
    if not (low <= value <= high):
        raise VaelabError(f"{key} must be between {low} and {high}, got {value}")
