"""vaelab: train, evaluate and understand variational autoencoders on image data."""

from .version import __version__
from .config import Config
from .errors import VaelabError
from .training import fit

#: the older name of ``fit``, kept working
train = fit


def load_dataset(name, split="train", data_dir=None, download=False, **kwargs):
    """A dataset split as uint8 images (N, C, H, W) and int labels; see vaelab.data."""
    from .data import load_dataset as _load

    return _load(name, split, data_dir=data_dir, download=download, **kwargs)


def load_run(path, device="cpu", which="final"):
    """Load a run directory for evaluate / sample / reconstruct / encode."""
    from .rundir.load import load_run as _load_run

    return _load_run(path, device=device, which=which)


__all__ = ["Config", "VaelabError", "load_dataset", "fit", "train", "load_run", "__version__"]
