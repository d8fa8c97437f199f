"""vaelab: train, evaluate and understand variational autoencoders on image data."""

__version__ = "0.1.0"

from .config import Config  # noqa: E402
from .errors import VaelabError  # noqa: E402

# Import the vaelab.train subpackage now, so the function below is what the name
# `vaelab.train` keeps: a later `import vaelab.train.x` finds the subpackage in sys.modules
# and does not rebind the attribute.
from . import train as _train_package  # noqa: E402,F401


def load_dataset(name, split="train", data_dir=None, download=False, **kwargs):
    """A dataset split as uint8 images (N, C, H, W) and int labels; see vaelab.data."""
    from .data import load_dataset as _load

    return _load(name, split, data_dir=data_dir, download=download, **kwargs)


def train(config, out, resume=False, overwrite=False, progress=True):
    """Train ``config`` (a Config, or a preset name) into the run directory ``out``."""
    from .presets import load_preset
    from .train.trainer import train as _train

    if isinstance(config, str):
        config = load_preset(config)
    return _train(config, out, resume=resume, overwrite=overwrite, progress=progress)


def load_run(path, device="cpu", which="final"):
    """Load a run directory for evaluate / sample / reconstruct / encode."""
    from .runs import load_run as _load_run

    return _load_run(path, device=device, which=which)


__all__ = ["Config", "VaelabError", "load_dataset", "train", "load_run", "__version__"]
