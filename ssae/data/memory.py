"""In-memory training data: decode a dataset once into arrays (cached on disk), then draw augmented batches."""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..fileio import default_cache_dir  # noqa: F401  (re-exported)
from ..face import FRAMING_REVISION
from .layouts import FaceDataset
from .transforms import to_model_tensor


@dataclass
class Batch:
    """images: (B, 3, S, S) in [-1, 1]; masks: (B, 5, S, S) in [0, 1]; labelled: (B, 5) bool."""

    images: torch.Tensor
    masks: torch.Tensor
    labelled: torch.Tensor


class MemoryDataset:
    """All samples of a dataset as uint8 arrays: images (N, S, S, 3), masks (N, 5, S, S) (x255), labelled (N, 5)."""

    def __init__(self, names, images: np.ndarray, masks: np.ndarray, labelled: np.ndarray):
        self.names, self.images, self.masks, self.labelled = list(names), images, masks, labelled

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def load(cls, ds: FaceDataset, cache: str | os.PathLike | None = None, threads: int = 2) -> "MemoryDataset":
        """Decode every sample (with `threads` threads), or read the cache file if it matches the dataset."""
        key = hashlib.sha256(("|".join(ds.names) + f"|{ds.size}|{type(ds).__name__}|"
                              f"{getattr(ds, 'derived', '')}|framing{FRAMING_REVISION}").encode()).hexdigest()[:16]
        path = Path(cache) / f"{type(ds).__name__}-{ds.size}-{key}.npz" if cache else None
        if path is not None and path.exists():
            z = np.load(path, allow_pickle=False)
            return cls(z["names"].tolist(), z["images"], z["masks"], z["labelled"])
        with ThreadPoolExecutor(max(1, threads)) as ex:
            samples = list(ex.map(ds.sample, range(len(ds))))
        mem = cls([s.name for s in samples], np.stack([s.image for s in samples]),
                  np.stack([np.round(s.masks * 255).astype(np.uint8) for s in samples]),
                  np.stack([s.labelled for s in samples]))
        if path is not None:
            from ..fileio import atomic_write
            atomic_write(path, lambda tmp: np.savez(open(tmp, "wb"), names=np.array(mem.names), images=mem.images,
                                                    masks=mem.masks, labelled=mem.labelled))
        return mem

    @classmethod
    def concat(cls, parts: list["MemoryDataset"]) -> "MemoryDataset":
        return cls(sum((p.names for p in parts), []), np.concatenate([p.images for p in parts]),
                   np.concatenate([p.masks for p in parts]), np.concatenate([p.labelled for p in parts]))

    def split(self, n_last: int) -> tuple["MemoryDataset", "MemoryDataset"]:
        """(all but the last n_last samples, the last n_last samples)."""
        k = len(self) - n_last
        return (MemoryDataset(self.names[:k], self.images[:k], self.masks[:k], self.labelled[:k]),
                MemoryDataset(self.names[k:], self.images[k:], self.masks[k:], self.labelled[k:]))

    def batch(self, idx: np.ndarray, flip: np.ndarray | None = None) -> Batch:
        """The samples at `idx` as tensors; `flip` (bool per sample) mirrors images and masks horizontally."""
        img, msk = self.images[idx], self.masks[idx]
        if flip is not None and flip.any():
            img, msk = img.copy(), msk.copy()
            img[flip] = img[flip][:, :, ::-1]
            msk[flip] = msk[flip][..., ::-1]
        return Batch(to_model_tensor(img), torch.from_numpy(msk).float().div_(255.0),
                     torch.from_numpy(self.labelled[idx]))


class BatchSampler:
    """Endless shuffled epochs of fixed-size batches, reproducible from (seed, step) so training can resume."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, flip: bool = True, rank: int = 0, world: int = 1):
        if n < batch_size * world:
            raise ValueError(f"dataset of {n} samples is smaller than one batch ({batch_size} x {world})")
        self.n, self.bs, self.seed, self.flip, self.rank, self.world = n, batch_size, seed, flip, rank, world
        self.per_epoch = n // (batch_size * world)

    def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, k = divmod(step, self.per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        start = (k * self.world + self.rank) * self.bs
        idx = perm[start: start + self.bs]
        flips = np.random.default_rng([self.seed, epoch, k, self.rank, 1]).random(self.bs) < 0.5 if self.flip \
            else np.zeros(self.bs, bool)
        return idx, flips
