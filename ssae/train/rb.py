"""Refinement-block training (the paper's Eq. 5).

Edits come from the frozen SAE: for each image an ROI is drawn, its mask taken from the ground truth where labelled
(else from the trained SMPN), and the coarse edit Y_N decoded with a random seed and strength. Each ROI's RB is
trained to reproduce Y_N outside the ROI (L1 on Y_ref * (1 - M) vs Y_N * (1 - M)) and, inside it, to fool a
discriminator that sees the noise-free reconstruction Y_SAE as real (weight 0.5, non-saturating GAN). One ROI
discriminator (mask as input) serves the five RBs.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import read_checkpoint
from ..data.memory import BatchSampler
from ..models.discriminators import MaskedPatchDiscriminator, masked_mean
from ..models.sae import StyleEdit
from .base import Trainer
from .configs import RBTrainConfig  # noqa: F401
from .common import average_gradients
from . import data as train_data


class RBTrainer(Trainer):
    component = "rb"

    def build(self):
        cfg = self.cfg
        size = self.model_cfg.image_size
        self.images_per_step = cfg.batch_size
        for path, prefix in ((cfg.sae, "sae."), (cfg.smpn, "smpn.")):
            if path:
                _, sd, _ = read_checkpoint(path)
                sd = {k: v for k, v in sd.items() if k.startswith(prefix)}
                missing, _ = self.model.load_state_dict(sd, strict=False)
        self.model.sae.eval().freeze()
        self.model.smpn.eval()
        for p in list(self.model.sae.parameters()) + list(self.model.smpn.parameters()):
            p.requires_grad_(False)
        self.rbs = self.model.refiners.train()
        self.D = MaskedPatchDiscriminator(cfg.d_channels).to(self.device)
        self.opt_g = torch.optim.Adam(self.rbs.parameters(), lr=cfg.lr, betas=(0.5, 0.99))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr, betas=(0.5, 0.99))
        self.data = train_data.labelled(cfg.data, size, "train")
        self.sampler = BatchSampler(len(self.data), cfg.batch_size, cfg.seed, rank=self.rank, world=self.world)

    def modules(self):
        return {"rb": self.rbs, "D": self.D}

    def optimizers(self):
        return {"g": self.opt_g, "d": self.opt_d}

    @torch.no_grad()
    def make_edits(self, step: int):
        """(images, roi index per image, masks (B,1,H,W), Y_N, Y_SAE) for one batch."""
        cfg = self.cfg
        idx, flip = self.sampler.indices(step)
        b = self.data.batch(idx, flip)
        x = b.images.to(self.device)
        rng = np.random.default_rng([cfg.seed, step, self.rank])
        n_rois = len(self.model.rois)
        roi = rng.integers(0, n_rois, len(idx))
        pred = None
        masks = []
        for i, r in enumerate(roi):
            if b.labelled[i, r]:
                masks.append(b.masks[i, r])
            else:
                if pred is None:
                    pred = self.model.smpn.predict(x).float().cpu()
                masks.append(pred[i, r])
        m = torch.stack(masks)[:, None].to(self.device)
        seeds = rng.integers(0, 2 ** 31, len(idx)).tolist()
        strength = torch.from_numpy(rng.uniform(cfg.strength_min, cfg.strength_max, len(idx))).float()
        with self.autocast():
            sp, gl = self.model.sae.encode(x)
            noises = self.model.sae.resolve_noise(0, sp)
            h, skip = self.model.sae.G.prefix(sp, gl, noises)
            y_sae = self.model.sae.G.tail(h, skip, gl, noises)
            y_n = self.model.sae.G.tail(h, skip, gl, noises, StyleEdit(m, seeds=seeds, strength=strength))
        return roi, m, y_n.float().clamp(-1, 1), y_sae.float().clamp(-1, 1)

    def refine(self, roi, m, y_n):
        out = torch.empty_like(y_n)
        for r in np.unique(roi):
            sel = torch.from_numpy(np.nonzero(roi == r)[0]).to(self.device)
            out[sel] = self.rbs[self.model.rois[r]](y_n[sel], m[sel])
        return out

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        roi, m, y_n, y_sae = self.make_edits(step)
        y_ref = self.refine(roi, m, y_n)
        # discriminator: Y_SAE (real) vs Y_ref (fake), inside the ROI
        s_real, w = self.D(y_sae, m)
        s_fake, _ = self.D(y_ref.detach(), m)
        loss_d = masked_mean(F.softplus(-s_real), w) + masked_mean(F.softplus(s_fake), w)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        average_gradients(self.D.parameters())
        self.opt_d.step()
        # refinement blocks
        for p in self.D.parameters():
            p.requires_grad_(False)
        s_fake, w = self.D(y_ref, m)
        rec = F.l1_loss(y_ref * (1 - m), y_n * (1 - m))
        gan = masked_mean(F.softplus(-s_fake), w)
        loss = cfg.lambda_rec * rec + cfg.lambda_gan * gan
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.rbs.parameters())
        self.opt_g.step()
        for p in self.D.parameters():
            p.requires_grad_(True)
        return {"rec_out": rec.item(), "gan": gan.item(), "D": loss_d.item()}
