"""Training: the loop, schedules and checkpoints; calling the package trains.

``vaelab.train(config, out, resume=False, overwrite=False, progress=True)`` is the Python
API's entry point. A function bound to the name ``vaelab.train`` would hide this package,
and ``import vaelab.train.callbacks as cb`` then fails (that form looks the package up as an
attribute of ``vaelab``). So the package itself is callable, through a subclass of the
module type with a ``__call__``: one name serves both uses, and no module moves.
"""

from __future__ import annotations

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, config, out, resume=False, overwrite=False, progress=True, callbacks=None):
        """Train ``config`` (a Config, or a preset name) into the run directory ``out``; returns its path.

        ``callbacks``: objects with any of the Trainer's hooks (vaelab.train.callbacks).
        """
        from ..presets import load_preset
        from .trainer import train

        if isinstance(config, str):
            config = load_preset(config)
        return train(config, out, resume=resume, overwrite=overwrite, progress=progress, callbacks=callbacks)


sys.modules[__name__].__class__ = _CallableModule
