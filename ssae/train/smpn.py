"""SMPN training: binary cross-entropy per ROI (the paper's Eq. 3), IoU on the validation split each epoch.

All ROIs train together as one batched bank (`SMPN(n_rois=5)`, grouped convs = five independent networks).
ROIs an image has no label for (e.g. LFW images where no landmarks were found) are left out of its loss.
Augmentation: horizontal flips.
"""
from __future__ import annotations

import math
import numpy as np
import torch
import torch.nn.functional as F

from ..data.memory import BatchSampler
from ..metrics import iou_counts
from .base import Trainer
from .configs import SMPNTrainConfig  # noqa: F401
from .common import average_gradients
from . import data as train_data


class SMPNTrainer(Trainer):
    component = "smpn"

    def build(self):
        cfg = self.cfg
        size = self.model_cfg.image_size
        self.images_per_step = cfg.batch_size
        self.net = self.model.smpn.train()
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        warm = max(1, cfg.steps // 20)
        self.sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay to 5%
            self.opt, lambda s: min(1.0, (s + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(
                math.pi * min(1.0, s / max(1, cfg.steps))))))
        self.data = train_data.labelled(cfg.data, size, "train")
        try:
            self.val = train_data.labelled(cfg.data, size, "val")
        except (ValueError, FileNotFoundError):  # no validation split (CelebAMask-HQ, folder): hold out 10%
            self.data, self.val = self.data.split(max(1, len(self.data) // 10))
        self.sampler = BatchSampler(len(self.data), cfg.batch_size, cfg.seed, rank=self.rank, world=self.world)

    def modules(self):
        return {"smpn": self.net}

    def optimizers(self):
        return {"opt": self.opt, "sched": self.sched}

    def eval_due(self, step: int) -> bool:
        every = self.cfg.eval_every or self.sampler.per_epoch
        return step % every == 0

    def train_step(self, step: int) -> dict[str, float]:
        idx, flip = self.sampler.indices(step)
        b = self.data.batch(idx, flip)
        x, y, known = b.images.to(self.device), b.masks.to(self.device), b.labelled.to(self.device)
        with self.autocast():
            logits = self.net(x)
        bce = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none").mean((2, 3))  # (B, R)
        w = known.float()
        per_roi = (bce * w).sum(0) / w.sum(0).clamp_min(1)
        loss = per_roi.sum()  # Eq. 3: sum over ROIs
        out = {}
        if self.cfg.dice_weight > 0:
            p = torch.sigmoid(logits.float())
            inter, total = (p * y).sum((2, 3)), (p + y).sum((2, 3))
            dice = 1 - (2 * inter + 1) / (total + 1)                                        # (B, R)
            dice_roi = (dice * w).sum(0) / w.sum(0).clamp_min(1)
            loss = loss + self.cfg.dice_weight * dice_roi.sum()
            out["dice"] = dice_roi.sum().item()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.net.parameters())
        self.opt.step()
        self.sched.step()
        out["bce"] = per_roi.sum().item()
        out.update({f"bce_{r}": per_roi[i].item() for i, r in enumerate(self.model_cfg.smpn.rois)})
        return out

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.val is None or self.rank != 0:
            return {}
        self.net.eval()
        rois = self.model_cfg.smpn.rois
        inter, union = np.zeros(len(rois)), np.zeros(len(rois))
        for s in range(0, len(self.val), 32):
            idx = np.arange(s, min(s + 32, len(self.val)))
            b = self.val.batch(idx)
            i_, u_ = iou_counts(self.net.predict(b.images.to(self.device)).float().cpu(), b.masks, b.labelled)
            inter, union = inter + i_, union + u_
        self.net.train()
        return {f"iou_{r}": float(inter[i] / union[i]) if union[i] else float("nan") for i, r in enumerate(rois)}
