"""Which datasets each trainer reads (from `DataConfig`), decoded into memory once."""
from __future__ import annotations

from pathlib import Path

from ..data.layouts import CelebAMaskHQ, FolderDataset, ImageFolder, LFWParts
from ..data.memory import MemoryDataset, default_cache_dir
from .common import DataConfig


def _cache(dc: DataConfig) -> Path:
    return Path(dc.cache) if dc.cache else default_cache_dir() / "arrays"


def labelled(dc: DataConfig, size: int, split: str = "train") -> MemoryDataset:
    """Images with ROI masks: LFW `split`, plus (train only) CelebAMask-HQ and the plain folder if given."""
    parts = []
    if dc.lfw:
        parts.append(MemoryDataset.load(LFWParts(dc.lfw, split, size, dc.lfw_derived), _cache(dc)))
    if split == "train":
        if dc.celeba:
            parts.append(MemoryDataset.load(CelebAMaskHQ(dc.celeba, size), _cache(dc)))
        if dc.folder:
            parts.append(MemoryDataset.load(FolderDataset(dc.folder, size), _cache(dc)))
    if not parts:
        raise ValueError(f"no labelled data for split {split!r}: set --lfw, --celeba or --folder")
    return parts[0] if len(parts) == 1 else MemoryDataset.concat(parts)


def unlabelled(dc: DataConfig, size: int) -> MemoryDataset:
    """Autoencoder training images: LFW *train* images (never val/test), the labelled datasets' images, and
    every unlabelled folder."""
    parts = []
    try:
        parts.append(labelled(dc, size, "train"))
    except ValueError:
        pass
    if dc.unlabelled:
        parts.append(MemoryDataset.load(ImageFolder(list(dc.unlabelled), size), _cache(dc)))
    if not parts:
        raise ValueError("no training images: set --unlabelled and/or a labelled dataset")
    return parts[0] if len(parts) == 1 else MemoryDataset.concat(parts)
