"""Figures: a grid of faces x (input, predicted masks, one edit per ROI)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from .data.transforms import from_model_tensor
from .models.ssae_model import SSAE

MASK_COLORS = {"hair": (230, 60, 40), "skin": (250, 200, 60), "nose": (60, 200, 90), "eyes": (60, 140, 250),
               "lips": (220, 60, 220)}


def mask_overlay(img: np.ndarray, masks: np.ndarray, rois) -> np.ndarray:
    """uint8 image (H,W,3) with each ROI's soft mask blended in its colour."""
    out = img.astype(np.float32)
    for r, roi in enumerate(rois):
        a = 0.55 * masks[r][..., None]
        out = out * (1 - a) + np.array(MASK_COLORS.get(roi, (255, 255, 255)), np.float32) * a
    return out.clip(0, 255).astype(np.uint8)


@torch.no_grad()
def edit_grid(model: SSAE, images: torch.Tensor, seed: int = 0, strength: float = 1.0, label: bool = True) -> Image.Image:
    """Rows: faces. Columns: input, masks overlay, then one edit per ROI."""
    masks = model.masks(images)
    cols = [from_model_tensor(images), None]
    cols[1] = np.stack([mask_overlay(cols[0][i], masks[i].numpy(), model.rois) for i in range(len(images))])
    for r, roi in enumerate(model.rois):
        out = model.edit(images, roi, seeds=[seed + i for i in range(len(images))], strength=strength,
                         mask=masks[:, r: r + 1])
        cols.append(from_model_tensor(out.image))
    n, s = len(images), images.shape[-1]
    top = 14 if label else 0
    grid = Image.new("RGB", (len(cols) * s, n * s + top), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c, col in enumerate(cols):
        if label:
            draw.text((c * s + 3, 1), ["input", "masks"][c] if c < 2 else model.rois[c - 2], fill=(0, 0, 0))
        for i in range(n):
            grid.paste(Image.fromarray(col[i]), (c * s, top + i * s))
    return grid
