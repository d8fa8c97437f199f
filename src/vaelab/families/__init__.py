"""Model families: the plain VAE of model.py (with its priors and flows) and the families
beyond it, each one module, built from a ModelConfig through one registry.

Every family offers what the rest of vaelab calls (docs/architecture.md, "What each model
offers"): the trainer, evaluation, DDP, figures, reports and load_run use nothing else.
"""

from __future__ import annotations

from ..config import FAMILIES as FAMILY_NAMES


def _vae(config, event_shape):
    from ..model import VAE

    return VAE(config, event_shape)


def _ladder(config, event_shape):
    from .ladder import ladder_from_config

    return ladder_from_config(config, event_shape)


def _m2(config, event_shape):
    from .m2 import M2

    return M2(config, event_shape)


#: model.family -> a builder (ModelConfig, event shape) -> the model
FAMILIES = {"vae": _vae, "ladder": _ladder, "m2": _m2}
assert tuple(FAMILIES) == FAMILY_NAMES  # the config validates against the names


def build_model(config, event_shape: tuple[int, ...]):
    """The model a ModelConfig describes (model.family picks the family)."""
    return FAMILIES[config.family](config, tuple(event_shape))
