"""Swapping Autoencoder training (Park et al. 2020; sae_architecture.md section 3).

Objective: L1 reconstruction; non-saturating GAN on reconstructions (x0.5) and swaps (x1.0); patch co-occurrence
GAN on swaps; lazy R1 every 16 D steps on the image D (10) and the patch D (1); Adam lr 0.002, betas (0, 0.99)
for E+G, lr and betas scaled by c = r1_every / (r1_every + 1) for the discriminators. D and G steps alternate.
A warm-up of `warmup_steps` trains the autoencoder with L1 only (no discriminators, weighted by `lambda_L1`) first:
it is much cheaper per step and gives the GAN phase sensible reconstructions to start from.

`lambda_texture_swap` > 0 adds a cheap, deterministic stand-in for what the swap GAN teaches, aimed at the layer
SSAE edits: image A decoded with image B's texture code at the injection layer(s) only (everything else from A)
should look like A recoloured with B's colour statistics (`color_transfer`). L1 alone lets the structure code carry
the whole image, so without this (or a long GAN phase) the texture code at that layer barely moves the output.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.memory import BatchSampler
from ..models.discriminators import ImageDiscriminator, PatchDiscriminator, random_crops
from ..models.ops import l2_normalize
from ..models.sae import StyleEdit, SwappingAutoencoder
from .base import Trainer
from .configs import SAETrainConfig  # noqa: F401
from .common import average_gradients
from . import data as train_data


def swap(x: torch.Tensor) -> torch.Tensor:
    """Exchange adjacent pairs along the batch (the official `swap`): needs an even batch."""
    return x.view(x.shape[0] // 2, 2, *x.shape[1:]).flip(1).reshape(x.shape)


def color_transfer(x: torch.Tensor, ref: torch.Tensor, eps: float = 1e-2) -> torch.Tensor:
    """x recoloured with ref's statistics: per image and channel, (x - mean_x) / std_x * std_ref + mean_ref
    (Reinhard et al. 2001, in RGB), clamped to the image range [-1, 1]. x, ref: (B, C, H, W)."""
    mx, sx = x.mean((2, 3), keepdim=True), x.std((2, 3), keepdim=True)
    mr, sr = ref.mean((2, 3), keepdim=True), ref.std((2, 3), keepdim=True)
    return ((x - mx) / (sx + eps) * sr + mr).clamp(-1.0, 1.0)


def late_texture_swap(G, structure: torch.Tensor, texture: torch.Tensor, noises=None,
                      reconstruct: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(reconstructions, late swaps) of a batch's codes (`SwappingAutoencoder.encode`) through generator G: the swap
    decodes each image with its pair's (`swap`) texture code at the injection layer(s) and its own code everywhere
    else, i.e. SSAE's S' = S + (S_B - S) * M with M = 1. One shared prefix; `noises` as `Generator.forward` takes
    them (None: fresh N(0,1), as in training). reconstruct=False skips the reconstructions' tail (returns None)."""
    h, skip = G.prefix(structure, texture, noises)
    rec = G.tail(h, skip, texture, noises) if reconstruct else None
    gl = l2_normalize(texture)
    ones = h.new_ones(h.shape[0], 1, *h.shape[-2:])  # M = 1 (resized per injection layer: still all ones)
    return rec, G.tail(h, skip, gl, noises, edit=StyleEdit(ones, region_noise=swap(gl) - gl))


class SAETrainer(Trainer):
    component = "sae"

    def build(self):
        cfg: SAETrainConfig = self.cfg
        if cfg.batch_size % 2:
            raise ValueError("SAE training swaps pairs of images: --batch-size must be even")
        size = self.model_cfg.image_size
        self.images_per_step = cfg.batch_size
        if cfg.init_official:
            off = SwappingAutoencoder.from_official(cfg.init_official, **_shaping(self.model_cfg.sae))
            self.model.sae.load_state_dict(off.state_dict())
        self.sae = self.model.sae.freeze(False)
        self.sae.G.set_upsample_mode("separate")
        self.sae.train()
        self.D = ImageDiscriminator(size, cfg.d_base_ch, cfg.d_max_ch).to(self.device)
        self.patch = cfg.patch_size or max(16, size // 4)
        self.Dp = PatchDiscriminator(self.patch, cfg.d_base_ch * 2, cfg.d_max_ch).to(self.device)
        c = cfg.r1_every / (cfg.r1_every + 1)
        self.opt_g = torch.optim.Adam(self.sae.parameters(), lr=cfg.lr, betas=(0.0, 0.99))
        self.opt_d = torch.optim.Adam(list(self.D.parameters()) + list(self.Dp.parameters()), lr=cfg.lr * c,
                                      betas=(0.0, 0.99 ** c))
        self.data = train_data.unlabelled(cfg.data, size)
        self.sampler = BatchSampler(len(self.data), cfg.batch_size, cfg.seed, rank=self.rank, world=self.world)
        self.val = None
        if cfg.data.lfw:
            self.val = train_data.labelled(cfg.data, size, "val")
        self.d_steps = 0

    def modules(self):
        return {"sae": self.sae, "D": self.D, "Dp": self.Dp}

    def optimizers(self):
        return {"g": self.opt_g, "d": self.opt_d}

    def resume(self) -> bool:
        """Resume, then apply this run's `--lr` (a checkpoint's optimizer state carries the lr it was saved with;
        a continued run may lower it, e.g. to fine-tune with a larger `--lambda-L1`)."""
        resumed = super().resume()
        c = self.cfg.r1_every / (self.cfg.r1_every + 1)
        for opt, lr in ((self.opt_g, self.cfg.lr), (self.opt_d, self.cfg.lr * c)):
            for g in opt.param_groups:
                g["lr"] = lr
        return resumed

    def eval_due(self, step: int) -> bool:
        every = self.cfg.eval_every or 500
        return step % every == 0

    def _batch(self, step):
        idx, flip = self.sampler.indices(step)
        return self.data.batch(idx, flip).images.to(self.device)

    def _crops(self, x):
        cfg = self.cfg
        return random_crops(x, cfg.patch_num_crops, self.patch, cfg.patch_min_scale, cfg.patch_max_scale)

    def _forward(self, real):
        """(reconstructions of the first half, swaps of the whole batch, the batch's codes)."""
        b = real.shape[0]
        sp, gl = self.sae.encode(real)
        rec = self.sae.decode(sp[: b // 2], gl[: b // 2])
        mix = self.sae.decode(swap(sp), gl)
        return rec, mix, (sp, gl)

    def _texture_swap(self, real, codes, reconstruct: bool = True):
        """(reconstruction of the whole batch or None, L1 of the late texture swap against `color_transfer`) from
        the batch's codes (encoded once per step)."""
        with self.autocast():
            rec, mix = late_texture_swap(self.sae.G, *codes, reconstruct=reconstruct)
        return rec, F.l1_loss(mix.float(), color_transfer(real, swap(real)))

    def train_step(self, step: int) -> dict[str, float]:
        cfg: SAETrainConfig = self.cfg
        real = self._batch(step)
        b = real.shape[0]
        if step < cfg.warmup_steps:  # autoencoder warm-up: L1 on the whole batch
            m = {}
            if cfg.lambda_texture_swap > 0:
                with self.autocast():
                    codes = self.sae.encode(real)
                rec, ts = self._texture_swap(real, codes)
                m["TS"] = ts.item()
            else:
                with self.autocast():
                    rec = self.sae(real)
                ts = 0.0
            l1 = F.l1_loss(rec.float(), real)
            loss = cfg.lambda_L1 * l1 + cfg.lambda_texture_swap * ts
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(self.sae.parameters())
            self.opt_g.step()
            return {"L1": l1.item(), **m}
        m = {}
        # ---- discriminator step ----
        with torch.no_grad(), self.autocast():
            rec, mix, _ = self._forward(real)
        with self.autocast():
            d_real, d_rec, d_mix = self.D(real).float(), self.D(rec.detach()).float(), self.D(mix.detach()).float()
            ref = self.Dp.extract_features(self._crops(real), cfg.patch_num_crops, aggregate=True)
            tgt = self.Dp.extract_features(self._crops(real), cfg.patch_num_crops)
            fake = self.Dp.extract_features(self._crops(mix.detach()), cfg.patch_num_crops)
            p_real = self.Dp.discriminate(ref, tgt).float()
            p_fake = self.Dp.discriminate(ref, fake).float()
        loss_d = (F.softplus(-d_real).mean() + 0.5 * F.softplus(d_rec).mean() + 0.5 * F.softplus(d_mix).mean()) \
            * cfg.lambda_GAN + (F.softplus(-p_real).mean() + F.softplus(p_fake).mean()) * cfg.lambda_PatchGAN
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        m.update(D_real=F.softplus(-d_real).mean().item(), D_mix=F.softplus(d_mix).mean().item(),
                 Dp=loss_d.item())
        self.d_steps += 1
        if self.d_steps % cfg.r1_every == 0:  # lazy R1, in fp32
            x = real.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.D(x).sum(), x, create_graph=True)
            r1 = g.pow(2).flatten(1).sum(1).mean()
            ra = self._crops(real).detach().requires_grad_(True)
            rt = self._crops(real).detach().requires_grad_(True)
            score = self.Dp.discriminate(self.Dp.extract_features(ra, cfg.patch_num_crops, aggregate=True),
                                         self.Dp.extract_features(rt, cfg.patch_num_crops))
            ga, gt = torch.autograd.grad(score.sum(), [ra, rt], create_graph=True)
            pr1 = ga.pow(2).flatten(1).sum(1).mean() + gt.pow(2).flatten(1).sum(1).mean()
            (cfg.r1_every * (cfg.lambda_R1 * 0.5 * r1 + cfg.lambda_patch_R1 * 0.5 * 0.5 * pr1)).backward()
            m.update(R1=r1.item(), PR1=pr1.item())
        average_gradients(list(self.D.parameters()) + list(self.Dp.parameters()))
        self.opt_d.step()
        # ---- generator / encoder step ----
        for p in list(self.D.parameters()) + list(self.Dp.parameters()):
            p.requires_grad_(False)
        with self.autocast():
            rec, mix, codes = self._forward(real)
            g_rec = F.softplus(-self.D(rec).float()).mean()
            g_mix = F.softplus(-self.D(mix).float()).mean()
            ref = self.Dp.extract_features(self._crops(real), cfg.patch_num_crops, aggregate=True).detach()
            g_patch = F.softplus(-self.Dp.discriminate(ref, self.Dp.extract_features(
                self._crops(mix), cfg.patch_num_crops)).float()).mean()
        l1 = F.l1_loss(rec.float(), real[: b // 2])
        loss_g = cfg.lambda_L1 * l1 + cfg.lambda_GAN * (0.5 * g_rec + g_mix) + cfg.lambda_PatchGAN * g_patch
        if cfg.lambda_texture_swap > 0:
            _, ts = self._texture_swap(real, codes, reconstruct=False)  # the GAN phase has its reconstructions
            loss_g = loss_g + cfg.lambda_texture_swap * ts
            m["TS"] = ts.item()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        average_gradients(self.sae.parameters())
        self.opt_g.step()
        for p in list(self.D.parameters()) + list(self.Dp.parameters()):
            p.requires_grad_(True)
        m.update(L1=l1.item(), G_rec=g_rec.item(), G_mix=g_mix.item(), G_patch=g_patch.item())
        return m

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.val is None or self.rank != 0:
            return {}
        from ..metrics import psnr
        self.sae.eval()
        n = min(self.cfg.eval_images, len(self.val))
        x = self.val.batch(np.arange(n)).images.to(self.device)
        y = torch.cat([self.sae.decode(*self.sae.encode(x[i: i + 16]), noise=0) for i in range(0, n, 16)])
        self.sae.train()
        return {"val_psnr": float(psnr(y, x).mean())}


def _shaping(sae_cfg) -> dict:
    import dataclasses
    return {f.name: getattr(sae_cfg, f.name) for f in dataclasses.fields(sae_cfg)}
