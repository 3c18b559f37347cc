# SPDX-License-Identifier: Apache-2.0
"""Shipped models: weights/manifest.json is the single source of truth for model names.

Weights are loaded offline from the repository's weights/ folder (or $TEC_WEIGHTS_DIR) and checked
against their sha256 before use.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import TecModelError

QUALITIES = tuple(range(1, 9))


def weights_dir() -> Path:
    env = os.environ.get("TEC_WEIGHTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "weights"


def _manifest() -> dict:
    path = weights_dir() / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TecModelError(f"no model manifest at {path} (set TEC_WEIGHTS_DIR?)") from None
    except json.JSONDecodeError as exc:
        raise TecModelError(f"corrupt model manifest {path}: {exc}") from None


def default_model() -> str:
    return _manifest().get("default", "tec-hp-v1")


def _entry(name: str | None) -> tuple[str, dict]:
    manifest = _manifest()
    name = name or manifest.get("default")
    try:
        return name, manifest["models"][name]
    except KeyError:
        raise TecModelError(f"unknown model {name!r}; available: {', '.join(sorted(manifest['models']))}") from None


def describe(name: str | None) -> dict:
    """What a .tec header records about a model: its name and the sha256 of its weights."""
    name, entry = _entry(name)
    return {"name": name, "sha256": entry["sha256"]}


def list_models() -> list[dict]:
    manifest = _manifest()
    return [dict(name=name, qualities=list(QUALITIES), default=(name == manifest.get("default")), **entry)
            for name, entry in sorted(manifest["models"].items())]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class LoadedModel:
    name: str
    sha256: str
    entropy: str            # "hyperprior" or "factorized"
    net: object             # TecImageModel in eval mode
    net64: object           # float64 copy for inference: no oneDNN kernels, so results do not depend on threads


_load_lock = threading.Lock()


@lru_cache(maxsize=8)
def _load_file(path: str, sha: str, config_json: str):
    import torch

    from .models.tec import TecImageModel

    actual = sha256_file(Path(path))
    if actual != sha:
        raise TecModelError(f"weights {path} have sha256 {actual}, manifest says {sha}")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    net = TecImageModel(**json.loads(config_json))
    state = ck["state_dict"]
    # CDF tables are stored, not rebuilt, so every process codes with bit-identical tables
    for key, value in state.items():
        module_name, _, buf = key.rpartition(".")
        if buf in ("_quantized_cdf", "_offset", "_cdf_length", "scale_table"):
            net.get_submodule(module_name)._buffers[buf] = torch.empty_like(value)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("gaussian_conditional.") for k in missing):
        raise TecModelError(f"weights {path} do not fit {TecImageModel(**json.loads(config_json)).__class__.__name__}: missing {missing}, unexpected {unexpected}")
    # the Gaussian conditional's CDF tables (1.2 s to build) are made when a learned tile is coded
    # (tilecodec._gaussian_tables): most encodes only run the network's cost estimate
    net.eval()
    net64 = copy.deepcopy(net).double().eval()
    return net, net64


def load_model(name: str | None = None) -> LoadedModel:
    name, entry = _entry(name)
    path = weights_dir() / entry["file"]
    if not path.exists():
        raise TecModelError(f"weights file {path} for model {name!r} is missing")
    with _load_lock:
        net, net64 = _load_file(str(path), entry["sha256"], json.dumps(entry["config"], sort_keys=True))
    return LoadedModel(name, entry["sha256"], entry["entropy"], net, net64)
