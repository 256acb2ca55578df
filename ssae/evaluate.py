"""Evaluation of an SSAE model on a labelled split (default: the LFW test split, held out from all training).

Metrics:
- SMPN IoU per ROI (threshold 0.5) against the labels (on LFW: hair and skin against the human labels; nose,
  eyes, lips against the landmark-derived masks);
- SAE reconstruction PSNR / SSIM (noise seed 0, strength 0, no refinement);
- edit locality per ROI: mean absolute change outside the ROI divided by inside, between an edit and the same
  pipeline (SMPN mask, SAE, RB) at strength 0; the ROI is the predicted mask > 0.5. `change_inside` is the mean
  absolute change inside the ROI in 8-bit levels (how visible the edit is).
"""
from __future__ import annotations

import numpy as np
import torch

from .data.memory import MemoryDataset
from .metrics import edit_locality, iou_counts, psnr, ssim
from .models.sae import StyleEdit
from .models.ssae_model import SSAE


@torch.no_grad()
def evaluate(model: SSAE, data: MemoryDataset, batch_size: int = 16, seeds_per_image: int = 1,
             strength: float = 1.0, max_images: int | None = None) -> dict:
    model.eval()
    rois = model.rois
    n = len(data) if max_images is None else min(len(data), max_images)
    inter, union = np.zeros(len(rois)), np.zeros(len(rois))
    p_all, s_all = [], []
    loc = {r: [] for r in rois}
    inside = {r: [] for r in rois}
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        b = data.batch(idx)
        x = b.images
        masks = model.masks(x)
        i_, u_ = iou_counts(masks, b.masks, b.labelled)
        inter, union = inter + i_, union + u_
        sp, gl = model.sae.encode(x)
        noises = model.sae.resolve_noise(0, sp)
        h, skip = model.sae.G.prefix(sp, gl, noises)
        rec = model.sae.G.tail(h, skip, gl, noises)
        p_all.append(psnr(rec, x))
        s_all.append(ssim(rec, x))
        for r, roi in enumerate(rois):
            m = masks[:, r: r + 1]
            base = model.refiners[roi](model.sae.G.tail(h, skip, gl, noises, StyleEdit(m, seeds=[0] * len(idx),
                                                                                        strength=0.0)), m)
            for k in range(seeds_per_image):
                seeds = [int(1000 * k + i) for i in idx]
                out = model.refiners[roi](model.sae.G.tail(h, skip, gl, noises,
                                                           StyleEdit(m, seeds=seeds, strength=strength)), m)
                ratio, din, _ = edit_locality(out, base, m)
                frac = (m > 0.5).flatten(1).float().mean(1)
                valid = (frac > 0) & (frac < 1)  # the ratio needs pixels inside and outside the ROI
                loc[roi] += ratio[valid].tolist()
                inside[roi] += (din[valid] * 127.5).tolist()
    return {
        "images": int(n),
        "smpn_iou": {roi: float(inter[i] / union[i]) if union[i] else None for i, roi in enumerate(rois)},
        "reconstruction": {"psnr_db": float(torch.cat(p_all).mean()), "ssim": float(torch.cat(s_all).mean())},
        "locality_ratio": {roi: float(np.mean(v)) if v else None for roi, v in loc.items()},
        "change_inside_8bit": {roi: float(np.mean(v)) if v else None for roi, v in inside.items()},
        "strength": strength,
    }
