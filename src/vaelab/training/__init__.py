"""Training: the loop (trainer), schedules, the NaN guard and training-time callbacks.

The Python API's entry point is ``vaelab.fit`` (``training.fit`` here); ``vaelab.train`` is
the same function under its older name.
"""

from __future__ import annotations


def fit(config, out, resume=False, overwrite=False, progress=True, callbacks=None):
    """Train ``config`` (a Config, or a preset name) into the run directory ``out``; returns its path.

    ``callbacks``: objects with any of the Trainer's hooks (vaelab.training.callbacks).
    """
    from ..presets import load_preset
    from .trainer import train

    if isinstance(config, str):
        config = load_preset(config)
    return train(config, out, resume=resume, overwrite=overwrite, progress=progress, callbacks=callbacks)
