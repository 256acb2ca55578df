"""Face datasets in three layouts, each giving an image and the five ROI masks.

- `CelebAMaskHQ`: the official CelebAMask-HQ release (`CelebA-HQ-img/{i}.jpg`,
  `CelebAMask-HQ-mask-anno/{i // 2000}/{i:05d}_{part}.png`); a part file that does not exist means the part is
  absent (empty mask), as in the release.
- `LFWParts`: LFW Part Labels (`images/NAME.jpg`, `labels/NAME.png` with 0 background, 1 face skin, 2 hair,
  `train.txt`/`val.txt`/`test.txt`). Nose, eyes and lips+mouth come from the landmark cache written by
  `ssae data lfw-masks` (see `ssae.data.landmarks`); skin = LFW skin minus those three.
- `FolderDataset`: anyone's own data, `images/NAME.ext` and `masks/<roi>/NAME.png` (a missing mask file means that
  ROI is unlabelled for that image: it is excluded from the loss, not treated as empty).
- `ImageFolder`: unlabelled images (for autoencoder training), recursively.

ROIs (fixed order, `ssae.config.ROIS`): hair, skin, nose, eyes (l_eye + r_eye), lips (u_lip + l_lip + mouth).
Every dataset returns `FaceSample`s at the model size, cut by the same face framing as edits
(`ssae.face.frame_training_image`: the largest detected face, else the whole frame).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..config import ROIS
from ..face import frame_training_image

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

#: CelebAMask-HQ part names that make each ROI.
CELEBA_PARTS = {"hair": ("hair",), "skin": ("skin",), "nose": ("nose",), "eyes": ("l_eye", "r_eye"),
                "lips": ("u_lip", "l_lip", "mouth")}
#: Index-map labels of the CelebAMask-HQ sample PNGs (official order).
CELEBA_LABELS = ("background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
                 "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")


@dataclass
class FaceSample:
    """image: uint8 (S, S, 3); masks: float32 (5, S, S) in [0, 1]; labelled: bool (5,) (which masks are known)."""

    name: str
    image: np.ndarray
    masks: np.ndarray
    labelled: np.ndarray


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_binary(path: str | os.PathLike) -> np.ndarray:
    with Image.open(path) as im:
        return (np.asarray(im.convert("L")) > 127).astype(np.float32)


def _at_photo_size(masks: dict[str, np.ndarray | None], img: np.ndarray) -> dict[str, np.ndarray | None]:
    """Masks resized (bilinear) to the photo's size where a layout stores them at another (CelebAMask-HQ: 512)."""
    out = {}
    for roi, m in masks.items():
        if m is not None and m.shape != img.shape[:2]:
            m = np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize(
                (img.shape[1], img.shape[0]), Image.BILINEAR))
        out[roi] = m
    return out


def _sample(name: str, img: np.ndarray, masks: dict[str, np.ndarray | None], size: int) -> FaceSample:
    crop = frame_training_image(img, size)
    out = np.zeros((len(ROIS), size, size), np.float32)
    known = np.zeros(len(ROIS), bool)
    for i, roi in enumerate(ROIS):
        m = masks.get(roi)
        if m is None:
            continue
        out[i] = crop.cut_mask(np.clip(m, 0, 1))
        known[i] = True
    return FaceSample(name, crop.cut_rgb(img), out, known)


class FaceDataset:
    """Base: a list of names, `sample(i)` at the model size, and `__len__`."""

    names: list[str]
    size: int

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> FaceSample:
        return self.sample(i)

    def photo(self, i: int) -> tuple[np.ndarray, dict[str, np.ndarray | None]]:  # pragma: no cover - abstract
        """The i-th photo at its own resolution (uint8 (H, W, 3)) and its ROI masks at that resolution (float in
        [0, 1]; None where unlabelled)."""
        raise NotImplementedError

    def sample(self, i: int) -> FaceSample:
        """The i-th photo framed to the model size (`ssae.face.frame_training_image`)."""
        img, masks = self.photo(i)
        return _sample(self.names[i], img, masks, self.size)


class CelebAMaskHQ(FaceDataset):
    def __init__(self, root: str | os.PathLike, size: int, indices: Sequence[int] | None = None):
        self.root = Path(root)
        img_dir = self.root / "CelebA-HQ-img"
        if not img_dir.is_dir():
            raise FileNotFoundError(f"{img_dir} not found (expected the CelebAMask-HQ release layout)")
        found = sorted(int(p.stem) for p in img_dir.glob("*.jpg") if p.stem.isdigit())
        self.indices = list(indices) if indices is not None else found
        self.names = [str(i) for i in self.indices]
        self.size = size

    def part_path(self, i: int, part: str) -> Path:
        return self.root / "CelebAMask-HQ-mask-anno" / str(i // 2000) / f"{i:05d}_{part}.png"

    def photo(self, k: int):
        i = self.indices[k]
        img = read_rgb(self.root / "CelebA-HQ-img" / f"{i}.jpg")
        masks = {}
        for roi, parts in CELEBA_PARTS.items():
            m = None
            for part in parts:
                p = self.part_path(i, part)
                if p.exists():
                    pm = read_binary(p)
                    m = pm if m is None else np.maximum(m, pm)
            masks[roi] = m if m is not None else np.zeros((512, 512), np.float32)
        return img, _at_photo_size(masks, img)


class LFWParts(FaceDataset):
    def __init__(self, root: str | os.PathLike, split: str, size: int, derived: str | os.PathLike | None = None):
        self.root = Path(root)
        split_file = self.root / f"{split}.txt"
        if not split_file.exists():
            raise FileNotFoundError(f"{split_file} not found (LFW Part Labels layout)")
        self.names = split_file.read_text().split()
        self.split, self.size = split, size
        self.derived = Path(derived) if derived is not None else None

    def derived_path(self, roi: str, name: str) -> Path | None:
        return None if self.derived is None else self.derived / roi / f"{name}.png"

    def photo(self, k: int):
        name = self.names[k]
        img = read_rgb(self.root / "images" / f"{name}.jpg")
        with Image.open(self.root / "labels" / f"{name}.png") as im:
            lab = np.asarray(im)
        masks: dict[str, np.ndarray | None] = {"hair": (lab == 2).astype(np.float32)}
        skin = (lab == 1).astype(np.float32)
        parts = {}
        for roi in ("nose", "eyes", "lips"):
            p = self.derived_path(roi, name)
            parts[roi] = read_binary(p) if p is not None and p.exists() else None
        masks.update(parts)
        if all(v is not None for v in parts.values()):
            skin = skin * (1 - np.maximum.reduce([parts["nose"], parts["eyes"], parts["lips"]]))
        masks["skin"] = skin
        return img, _at_photo_size(masks, img)


class FolderDataset(FaceDataset):
    def __init__(self, root: str | os.PathLike, size: int):
        self.root = Path(root)
        img_dir = self.root / "images"
        if not img_dir.is_dir():
            raise FileNotFoundError(f"{img_dir} not found (expected images/NAME.ext and masks/<roi>/NAME.png)")
        self.files = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        self.names = [p.stem for p in self.files]
        self.size = size

    def photo(self, k: int):
        img = read_rgb(self.files[k])
        masks = {}
        for roi in ROIS:
            p = self.root / "masks" / roi / f"{self.names[k]}.png"
            masks[roi] = read_binary(p) if p.exists() else None
        return img, _at_photo_size(masks, img)


class ImageFolder(FaceDataset):
    """Unlabelled images under one or more folders (recursively), for autoencoder training."""

    def __init__(self, roots: str | os.PathLike | Sequence[str | os.PathLike], size: int,
                 exclude: set[str] | None = None):
        roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
        self.files = []
        for r in roots:
            r = Path(r)
            if r.is_file():
                self.files.append(r)
                continue
            if not r.is_dir():
                raise FileNotFoundError(f"image folder {r} not found")
            self.files += sorted(p for p in r.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if exclude:
            self.files = [p for p in self.files if p.stem not in exclude]
        self.names = [p.stem for p in self.files]
        self.size = size

    def photo(self, k: int):
        return read_rgb(self.files[k]), {}


def celeba_index_map_to_parts(label: np.ndarray) -> dict[str, np.ndarray]:
    """Split a CelebAMask-HQ index map (official label order) into binary part masks (present parts only)."""
    out = {}
    for idx, part in enumerate(CELEBA_LABELS):
        if idx == 0:
            continue
        m = label == idx
        if m.any():
            out[part] = m
    return out
