"""Which torch device a name means, checked once for every command that takes --device."""

from __future__ import annotations

import torch

from .errors import VaelabError


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'; one clear error for anything
    else or for CUDA on a machine without it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise VaelabError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise VaelabError(f"device {name!r} is not supported: vaelab runs on cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VaelabError(f"device {name} asked for, but no CUDA device is available (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise VaelabError(f"device {name} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
