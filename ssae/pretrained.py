"""The bundled model (lfw128, trained on LFW on a 2-core CPU; see ssae/assets/lfw128/MODEL_CARD.md)."""
from __future__ import annotations

import os
from pathlib import Path

from .checkpoint import CheckpointError

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED = {"lfw128": ASSETS / "lfw128"}


def bundled_path(name: str = "lfw128") -> Path:
    try:
        path = BUNDLED[name]
    except KeyError:
        raise ValueError(f"unknown bundled model {name!r} (have: {', '.join(BUNDLED)})") from None
    if not any(path.glob("*.safetensors")):
        raise CheckpointError(f"bundled model files missing in {path} (reinstall ssae)")
    return path


def load_pretrained(name_or_path: str | os.PathLike | None = None):
    """Load SSAE models ready for the runtime: None = the bundled model; else a bundled name or a checkpoint
    file/folder. Returns an `ssae.models.SSAE` in eval mode with folded inference weights."""
    from .checkpoint import load_model
    if name_or_path is None:
        return load_model(bundled_path())
    if str(name_or_path) in BUNDLED:
        return load_model(bundled_path(str(name_or_path)))
    return load_model(name_or_path)
