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
from ..config import MAX_RATE
from . import validate

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
    raw = validate.read_bytes(path, 1 << 40, "a vaelab checkpoint")
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
    meta = validate.parse_json(meta_text, f"{path}'s metadata", finite=False)  # best_val starts at -inf
    if not isinstance(meta, dict):
        raise VaelabError(f"{path} has unreadable metadata")
    return tensors, meta


def check_run_id(where, meta: dict, run_id: str | None) -> None:
    """A file of this run: one carrying another run's id (copied in) is refused; one without
    an id (written before run ids existed) is taken as it is."""
    saved = meta.get("run_id")
    if run_id and saved is not None and saved != run_id:
        raise VaelabError(f"{where} belongs to run {saved!r:.40}, this run is {run_id}: it was copied from "
                          f"another run; restore this run's own file")


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


#: Adam's state per parameter, as torch.optim.Adam keeps it, and the settings a checkpoint must carry
_ADAM_STATE = ("exp_avg", "exp_avg_sq", "step")
_NUMBERS = {"lr", "betas", "eps", "weight_decay", "params"}


def optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta, where: str) -> dict:
    """The optimizer's state_dict out of a checkpoint, checked against ``optimizer``'s own
    parameters before the optimizer sees any of it: the fused Adam kernel trusts that every
    moment has its parameter's shape and dtype, and reads out of bounds otherwise."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    fix = "the checkpoint does not fit this model (edited, or from another run); resume from another one, or retrain"
    live = flatten_optimizer(optimizer.state_dict())[1]["param_groups"]
    if not (isinstance(meta, dict) and isinstance(meta.get("param_groups"), list)
            and len(meta["param_groups"]) == len(live) and meta.get("scalars", {}) == {}):
        raise VaelabError(f"{where}: its optimizer metadata is not Adam's for this model: {fix}")
    groups = []
    for saved, own in zip(meta["param_groups"], live):
        # initial_lr: an lr schedule's, kept when a resume drops the schedule
        if not isinstance(saved, dict) or not set(saved) <= set(own) | {"initial_lr"} or not _NUMBERS <= set(saved):
            raise VaelabError(f"{where}: its optimizer settings are not Adam's ({_keys(saved)}): {fix}")
        validate.check_like(saved, {k: own.get(k, 0.0) for k in saved}, f"{where}: optimizer")
        lr, betas, eps, decay = saved["lr"], saved["betas"], saved["eps"], saved["weight_decay"]
        if saved["params"] != own["params"]:
            raise VaelabError(f"{where}: its optimizer covers parameters {saved['params'][:8]}, this model has "
                              f"{own['params'][:8]}: {fix}")
        if not (validate.is_number(lr) and 0 <= lr <= MAX_RATE
                and all(validate.is_number(b) and 0 <= b < 1 for b in betas)
                and validate.is_number(eps) and 0 < eps <= 1
                and validate.is_number(decay) and 0 <= decay <= MAX_RATE):
            raise VaelabError(f"{where}: optimizer settings out of range (lr {lr!r}, betas {betas!r}, eps {eps!r}, "
                              f"weight_decay {decay!r}): {fix}")
        # the numbers are the checkpoint's; how the optimizer runs (fused, foreach, ...) is this trainer's
        numbers = {k: v for k, v in saved.items() if k in _NUMBERS or k == "initial_lr"}
        groups.append(dict(own, **numbers) | {"betas": tuple(betas)})
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, index, key = (name.split(".", 2) + ["", ""])[:3]
        if not (index.isdigit() and int(index) < len(params) and key in _ADAM_STATE):
            raise VaelabError(f"{where}: unexpected optimizer tensor {name!r}: {fix}")
        state.setdefault(int(index), {})[key] = value
    for index, entry in state.items():
        param = params[index]
        missing = [k for k in _ADAM_STATE if k not in entry]
        if missing:
            raise VaelabError(f"{where}: optimizer state of parameter {index} lacks {', '.join(missing)}: {fix}")
        for key in ("exp_avg", "exp_avg_sq"):
            t = entry[key]
            if t.shape != param.shape or t.dtype != param.dtype:
                raise VaelabError(f"{where}: optimizer state optim.{index}.{key} is {t.dtype} {tuple(t.shape)}, its "
                                  f"parameter {param.dtype} {tuple(param.shape)}: {fix}")
            if not validate.bounded(t) or (key == "exp_avg_sq" and bool((t < 0).any())):
                raise VaelabError(f"{where}: optimizer state optim.{index}.{key} holds NaN, inf, values beyond "
                                  f"{validate.MAX_WEIGHT:g} or (its squares) negative values: {fix}")
            entry[key] = t.to(param.device)
        step = entry["step"]
        if step.numel() != 1 or step.dtype != torch.float32 or not bool(torch.isfinite(step).all()) \
                or not 1 <= float(step) <= 2**53:
            raise VaelabError(f"{where}: optimizer step count of parameter {index} is not one positive float32 "
                              f"({step.dtype} {tuple(step.shape)}): {fix}")
        # Adam keeps the count as a float32 scalar, on the parameter's device for the fused kernel
        entry["step"] = step.reshape(()).to(param.device if optimizer.defaults.get("fused") else "cpu")
    return {"state": state, "param_groups": groups}


def _keys(value) -> str:
    return ", ".join(sorted(map(str, value))[:8]) if isinstance(value, dict) else type(value).__name__


# -- the model's weights inside a checkpoint or model.safetensors ------------------------------

MODEL_PREFIX = "model."


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict under the ``model.`` prefix, beside optimizer, RNG and transform state."""
    return {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}


def model_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's state_dict out of a checkpoint's or model.safetensors' tensors."""
    return {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}


def check_model_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], where: str) -> None:
    """``state`` must hold exactly the tensors of ``expected`` (a model's state_dict, on any
    device, the meta device included), with the same shapes and dtypes, and finite weights."""
    fix = "was the config edited, or the file taken from another run? restore it, or retrain"
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        said = "; ".join(part for part in (f"missing {', '.join(missing[:3])}" if missing else "",
                                           f"unexpected {', '.join(extra[:3])}" if extra else "") if part)
        raise VaelabError(f"{where} does not hold this model's weights ({said}): {fix}")
    for name, own in expected.items():
        t = state[name]
        if t.shape != own.shape or t.dtype != own.dtype:
            raise VaelabError(f"{where}: {name} is {t.dtype} {tuple(t.shape)}, the model's is {own.dtype} "
                              f"{tuple(own.shape)}: {fix}")
        if t.is_floating_point() and not validate.bounded(t):
            raise VaelabError(f"{where}: weights hold NaN/inf (or values beyond {validate.MAX_WEIGHT:g}) in {name}: "
                              f"the file is damaged or training diverged; use an earlier checkpoint, or retrain")


def saved_transform(tensors: dict[str, torch.Tensor]):
    """The fitted PCA saved beside the weights, or None (the other transforms have no state)."""
    if "pca.components" not in tensors:
        return None
    from ..pca import PCATransform

    return PCATransform.from_state(tensors)
