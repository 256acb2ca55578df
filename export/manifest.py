"""An export folder's manifest (`manifest.json`): its format, structure and file integrity checks.

Runtimes read export folders through this module alone; it needs neither PyTorch nor ONNX, so a deployment
without them runs an export (`ssae.export.onnx_export` writes them).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ssae.errors import SSAEError
from ssae.fileio import read_json

MANIFEST = "manifest.json"
#: ssae-onnx-2: the graphs read their weights from the shared file the manifest lists under "weights".
FORMAT = "ssae-onnx-2"
READ_FORMATS = (FORMAT, "ssae-onnx-1")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ExportError(SSAEError, ValueError):
    """An export folder is missing, incomplete or corrupt."""


def _confined(f) -> bool:
    """A plain file name inside the export folder: no paths, no .."""
    f = str(f)
    return Path(f).name == f and f not in ("", ".", "..")


def read_manifest(export_dir: str | os.PathLike, verify: bool = True) -> dict:
    """Read manifest.json: its structure checked (stages, each with a plain file name inside the folder, inputs
    and outputs; the shared weights file, if any, a plain file name too); with verify, every listed file (graphs
    and weights file) exists and matches its sha256."""
    d = Path(export_dir)
    manifest = read_json(d / MANIFEST, ExportError, "export manifest",
                         missing=f"{d} is not an ssae ONNX export (no {MANIFEST})")
    got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
    if got not in READ_FORMATS:
        raise ExportError(f"{d / MANIFEST} has format {got!r}, expected {FORMAT!r}")
    stages = manifest.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise ExportError(f"export manifest {d / MANIFEST} has no stages")
    for key in ("model_config", "rois"):
        if key not in manifest:
            raise ExportError(f"export manifest {d / MANIFEST} has no {key}")
    for name, e in stages.items():
        if not isinstance(e, dict) or not all(k in e for k in ("file", "sha256", "inputs", "outputs")):
            raise ExportError(f"export manifest entry {name!r} lacks file, sha256, inputs or outputs")
        if not _confined(e["file"]):
            raise ExportError(f"export manifest entry {name!r} names a file outside the export folder: {e['file']!r}")
    weights = manifest.get("weights")
    if weights is not None:
        if not isinstance(weights, dict) or not all(k in weights for k in ("file", "sha256")):
            raise ExportError(f"export manifest {d / MANIFEST}: \"weights\" lacks file or sha256")
        if not _confined(weights["file"]):
            raise ExportError(f"export manifest names a weights file outside the export folder: {weights['file']!r}")
    if verify:
        for name, e in stages.items():
            f = d / e["file"]
            if not f.exists():
                raise ExportError(f"missing ONNX file {f}")
            if sha256_file(f) != e["sha256"]:
                raise ExportError(f"corrupt ONNX file {f} (sha256 mismatch)")
        if weights is not None:
            f = d / weights["file"]
            if not f.is_file():
                raise ExportError(f"missing weights file {f} (the graphs' shared weights)")
            if sha256_file(f) != weights["sha256"]:
                raise ExportError(f"corrupt weights file {f} (sha256 mismatch)")
    return manifest
