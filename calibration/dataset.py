"""Calibration sets: real faces at the model size, stored as one compact file with their provenance.

A set is built once from a training-data loader (default: LFW Part Labels train split, never the test split)
or a folder of images, and saved as `.npz` (uint8 images, names, optional masks) with a JSON provenance record
(source, layout, split, size, count, selection, sha256 of the pixels). Loading verifies the pixels against the
recorded hash, so a report always says exactly which faces calibrated a graph.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssae.errors import SSAEError
from ssae.fileio import atomic_write

FORMAT = "ssae-calibration-set/1"


class CalibrationSetError(SSAEError, ValueError):
    """A calibration set file is missing, unreadable or does not match its recorded hash."""


def _pixels_sha256(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes() + str(images.shape).encode()).hexdigest()


@dataclass
class CalibrationSet:
    """names (N), images (N, S, S, 3) uint8 RGB, provenance (JSON-serialisable)."""

    names: list[str]
    images: np.ndarray
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise CalibrationSetError(f"calibration images must be uint8 (N, S, S, 3), got {self.images.dtype} "
                                      f"{self.images.shape}")
        if len(self.names) != len(self.images):
            raise CalibrationSetError(f"{len(self.names)} names for {len(self.images)} calibration images")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    @classmethod
    def from_dataset(cls, ds, count: int, source: str) -> "CalibrationSet":
        """The first `count` samples (in the loader's sorted order) of a `ssae.data` loader."""
        from ssae.data.memory import MemoryDataset

        if count < 1:
            raise CalibrationSetError("a calibration set needs at least one image")
        ds.names = ds.names[:count]
        if hasattr(ds, "files"):
            ds.files = ds.files[:count]
        mem = MemoryDataset.load(ds)
        prov = {"source": source, "layout": type(ds).__name__, "split": getattr(ds, "split", None),
                "size": int(ds.size), "count": len(mem), "selection": f"first {len(mem)} in sorted order",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        return cls(list(mem.names), mem.images, prov)

    @classmethod
    def from_lfw(cls, root: str | os.PathLike, size: int, count: int = 200, split: str = "train") -> "CalibrationSet":
        """LFW Part Labels faces (default: the train split; the test split is for evaluation only)."""
        from ssae.data.layouts import LFWParts
        return cls.from_dataset(LFWParts(root, split, size), count, str(root))

    @classmethod
    def from_folder(cls, root: str | os.PathLike, size: int, count: int = 200) -> "CalibrationSet":
        """Any folder of face images (recursively), fitted to the model size like the runtime does."""
        from ssae.data.layouts import ImageFolder
        ds = ImageFolder(root, size)
        if not ds.names:
            raise CalibrationSetError(f"no images found under {root}")
        return cls.from_dataset(ds, count, str(root))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        prov = dict(self.provenance, format=FORMAT, sha256=_pixels_sha256(self.images))
        atomic_write(path, lambda tmp: np.savez_compressed(open(tmp, "wb"), images=self.images,
                                                           names=np.array(self.names),
                                                           provenance=np.array(json.dumps(prov))))
        self.provenance = prov
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CalibrationSet":
        path = Path(path)
        if not path.exists():
            raise CalibrationSetError(f"calibration set not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                images, names, prov = z["images"], z["names"].tolist(), json.loads(str(z["provenance"]))
        except (OSError, ValueError, KeyError) as e:
            raise CalibrationSetError(f"{path} is not a calibration set: {str(e).splitlines()[0]}") from None
        if prov.get("format") != FORMAT:
            raise CalibrationSetError(f"{path} has format {prov.get('format')!r}, expected {FORMAT!r}")
        if prov.get("sha256") != _pixels_sha256(images):
            raise CalibrationSetError(f"{path}: images do not match the recorded sha256 (corrupt or edited)")
        return cls(names, images, prov)
