"""Presets: one JSON file per experiment, each naming the write-up or paper it reproduces.

A preset file is a config file (sections data, model, train) plus ``description`` and
``source``; copy one to start a config of your own.
"""

from __future__ import annotations

import difflib
import json
from importlib import resources

from ..config import Config
from ..errors import VaelabError


def _files():
    return {p.name[:-5]: p for p in resources.files(__name__).iterdir() if p.name.endswith(".json")}


def preset_names() -> list[str]:
    return sorted(_files())


def preset_info(name: str) -> dict:
    files = _files()
    if name not in files:
        close = difflib.get_close_matches(name, list(files), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise VaelabError(f"unknown preset {name!r}{hint}; `vaelab presets` lists them")
    return json.loads(files[name].read_text())


def load_preset(name: str) -> Config:
    info = preset_info(name)
    sections = {k: v for k, v in info.items() if k in ("data", "model", "train")}
    config = Config.from_dict(sections, source=f"preset {name}")
    config.preset = name
    return config
