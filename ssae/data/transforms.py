"""The resize policy shared by training and inference.

Every image enters a model as a square of the model's size: the image is padded to a square (centred; edge pixels
replicated), then resized with an antialiased bicubic filter. Masks use the same geometry with a box (area)
filter, so they stay soft in [0, 1]. `SquareFit.restore` inverts the geometry for outputs: resize back to the
padded square, then crop the padding, giving exactly the input's size. Square inputs (all training data) are only
resized.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class SquareFit:
    """Geometry mapping an (H, W) image to a (size, size) model input and back."""

    height: int
    width: int
    size: int

    @property
    def side(self) -> int:
        return max(self.height, self.width)

    @property
    def pad(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) padding that makes the image square."""
        dh, dw = self.side - self.height, self.side - self.width
        return dw // 2, dh // 2, dw - dw // 2, dh - dh // 2

    def forward_rgb(self, img: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> uint8 (size, size, 3)."""
        l, t, r, b = self.pad
        if any(self.pad):
            img = np.pad(img, ((t, b), (l, r), (0, 0)), mode="edge")
        if img.shape[0] == self.size:
            return np.ascontiguousarray(img)
        return np.asarray(Image.fromarray(img).resize((self.size, self.size), Image.BICUBIC, reducing_gap=None))

    def forward_mask(self, mask: np.ndarray) -> np.ndarray:
        """float (H, W) in [0, 1] -> float32 (size, size)."""
        l, t, r, b = self.pad
        if any(self.pad):
            mask = np.pad(mask, ((t, b), (l, r)), mode="constant")
        m = mask.astype(np.float32)
        if m.shape[0] == self.size:
            return m
        return np.asarray(Image.fromarray(m, mode="F").resize((self.size, self.size), Image.BOX
                                                              if m.shape[0] > self.size else Image.BILINEAR))

    def restore_rgb(self, img: np.ndarray) -> np.ndarray:
        """uint8 (size, size, 3) -> uint8 (H, W, 3)."""
        if self.side != self.size:
            img = np.asarray(Image.fromarray(img).resize((self.side, self.side), Image.BICUBIC))
        l, t, _, _ = self.pad
        return np.ascontiguousarray(img[t: t + self.height, l: l + self.width])

    def restore_mask(self, mask: np.ndarray) -> np.ndarray:
        """float (size, size) -> float32 (H, W) in [0, 1]."""
        m = mask.astype(np.float32)
        if self.side != self.size:
            m = np.asarray(Image.fromarray(m, mode="F").resize((self.side, self.side), Image.BILINEAR))
        l, t, _, _ = self.pad
        return np.clip(np.ascontiguousarray(m[t: t + self.height, l: l + self.width]), 0.0, 1.0)


def to_model_array(img: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> the model's input: float32 (1, 3, H, W) in [-1, 1] (every runtime's pre-processing)."""
    x = np.asarray(img).astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0
    return np.ascontiguousarray(x, dtype=np.float32)


def from_model_array(x: np.ndarray) -> np.ndarray:
    """The model's output float (3, H, W) or (1, 3, H, W) in [-1, 1] -> uint8 (H, W, 3) (clamped, rounded)."""
    x = np.asarray(x)
    x = x[0] if x.ndim == 4 else x
    return np.round((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(1, 2, 0)


def to_model_tensor(img: np.ndarray):
    """uint8 (..., H, W, 3) -> float32 tensor (..., 3, H, W) in [-1, 1]."""
    import torch

    t = torch.from_numpy(np.array(img, dtype=np.float32)).div_(127.5).sub_(1.0)  # a writable float32 copy
    return t.movedim(-1, -3)


def from_model_tensor(x) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3) (clamped, rounded)."""
    import torch

    return x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()
