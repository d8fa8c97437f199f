"""Checkpoints as safetensors files: tensors plus JSON metadata, checksummed, written atomically.

Nothing here unpickles: a file that is not a valid, untampered vaelab checkpoint (a torch
pickle, a truncated download, a flipped byte) is refused with a clear error instead of
being executed or half-read. The sha256 digest covers every tensor's name, dtype, shape
and bytes, and the JSON metadata.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import VaelabError
from ..atomicio import atomic_write_bytes

FORMAT = "vaelab-checkpoint-2"
FORMAT_V1 = "vaelab-checkpoint-1"  # digest over the tensors only; still read


def _digest(tensors: dict[str, torch.Tensor], meta_text: str | None = None) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().contiguous().cpu()
        h.update(key.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    if meta_text is not None:
        h.update(b"\0meta\0" + meta_text.encode())
    return h.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write ``tensors`` and the JSON-able ``meta`` to ``path`` atomically, with a digest."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta_text = json.dumps(meta)
    metadata = {"format": FORMAT, "meta": meta_text, "sha256": _digest(tensors, meta_text)}
    atomic_write_bytes(Path(path), st_save(tensors, metadata=metadata))


def _what_it_is(raw: bytes) -> str:
    """A short guess at what a refused file is, for the error message."""
    if len(raw) >= 9 and raw[8:9] == b"{":  # a safetensors header: 8 bytes of length, then JSON
        needed = 8 + int.from_bytes(raw[:8], "little")
        if needed > len(raw):
            return f"truncated (its header alone needs {needed:,} bytes, the file has {len(raw):,})"
        return f"a truncated or damaged safetensors file (its header does not describe its {len(raw):,} bytes)"
    if raw[:2] == b"PK":
        return "a zip archive (torch.save writes these: they hold a pickle, which vaelab never loads)"
    if raw[:1] == b"\x80":  # the PROTO opcode that starts every pickle since protocol 2
        return "it looks like a pickle, which vaelab never loads (it can run code)"
    return "truncated, or not a safetensors file"


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read and verify a file written by save_tensors; VaelabError if it is not one."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise VaelabError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        # safetensors checks that the header's offsets cover the file exactly, so a
        # truncated or padded file fails here; it never unpickles anything
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        metadata = json.loads(raw[8:8 + header_len]).get("__metadata__") or {}
    except Exception:
        raise VaelabError(f"{path} is not a readable vaelab checkpoint: {_what_it_is(raw)}") from None
    fmt = metadata.get("format")
    if fmt not in (FORMAT, FORMAT_V1):
        raise VaelabError(f"{path} is not a vaelab checkpoint (no '{FORMAT}' tag)")
    meta_text = metadata.get("meta")
    expected = _digest(tensors, meta_text if fmt == FORMAT else None)
    if meta_text is None or metadata.get("sha256") != expected:
        raise VaelabError(f"{path} failed its checksum: the file was changed or damaged after it "
                          f"was written; it is not used")
    try:
        meta = json.loads(meta_text)
    except json.JSONDecodeError:
        raise VaelabError(f"{path} has unreadable metadata") from None
    if not isinstance(meta, dict):
        raise VaelabError(f"{path} has unreadable metadata")
    return tensors, meta


# -- optimizer state <-> flat tensors + JSON ------------------------------------------------

def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# -- the model's weights inside a checkpoint or model.safetensors ------------------------------

MODEL_PREFIX = "model."


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict under the ``model.`` prefix, beside optimizer, RNG and transform state."""
    return {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}


def model_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's state_dict out of a checkpoint's or model.safetensors' tensors."""
    return {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}


def saved_transform(tensors: dict[str, torch.Tensor]):
    """The fitted PCA saved beside the weights, or None (the other transforms have no state)."""
    if "pca.components" not in tensors:
        return None
    from ..pca import PCATransform

    return PCATransform.from_state(tensors)
