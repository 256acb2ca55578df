"""The whole SemanticStyle Autoencoder: SMPN (masks) -> SAE (codes, mask-guided style modulation) -> RB (refine)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from ..config import SSAEConfig
from .refine import RefinementBlock
from .sae import StyleEdit, SwappingAutoencoder
from .smpn import SMPN


@dataclass
class EditOutput:
    """Images in [-1, 1]: the refined edit, the coarse SAE edit (Y_N) and the mask used."""

    image: torch.Tensor
    coarse: torch.Tensor
    mask: torch.Tensor


class SSAE(nn.Module):
    """All SSAE components for one configuration (the PyTorch reference pipeline; the runtime exports from it)."""

    def __init__(self, cfg: SSAEConfig):
        super().__init__()
        self.cfg = cfg
        self.sae = SwappingAutoencoder(cfg.sae)
        self.smpn = SMPN(cfg.smpn)
        self.refiners = nn.ModuleDict({roi: RefinementBlock(cfg.rb) for roi in cfg.smpn.rois})

    @property
    def rois(self) -> tuple[str, ...]:
        return self.cfg.smpn.rois

    def roi_index(self, roi: str) -> int:
        try:
            return self.rois.index(roi)
        except ValueError:
            raise ValueError(f"unknown ROI {roi!r} (choose from {', '.join(self.rois)})") from None

    def masks(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> soft masks (B, n_rois, H, W)."""
        return self.smpn.predict(x)

    def edit(self, x: torch.Tensor, roi: str, seeds: Sequence[int], strength: float | torch.Tensor = 1.0,
             mode: str = "region", noise_seed: int = 0, mask: torch.Tensor | None = None,
             refine: bool = True) -> EditOutput:
        """Edit the texture of `roi` in every image of x (one seed per image)."""
        i = self.roi_index(roi)
        if mask is None:
            mask = self.masks(x)[:, i: i + 1]
        structure, texture = self.sae.encode(x)
        coarse = self.sae.decode(structure, texture, noise=noise_seed,
                                 edit=StyleEdit(mask, seeds=list(seeds), strength=strength, mode=mode))
        out = self.refiners[roi](coarse, mask) if refine else coarse
        return EditOutput(out, coarse, mask)

    def freeze(self, on: bool = True) -> "SSAE":
        self.sae.freeze(on)
        return self
