"""The pipeline stages as modules with named tensor inputs and outputs.

These modules are what every backend runs: the torch backend calls them directly, the ONNX exporter traces them.
Data flows one way: image -> `smpn` (masks) -> `sae_encoder` (structure, texture) -> `sae_decoder_prefix`
(activations entering the injection layer, cached per image) -> `sae_decoder_edit` (the edit: mask, noise,
strength) -> `refine_<roi>` -> image. The generator's per-pixel noise-injection maps come from a fixed noise seed
and are baked into the decoder graphs as constants, so re-edits of one image differ only where the mask is.
"""
from __future__ import annotations


import torch
import torch.nn as nn

from ssae.kernels import sparse_tail
from ssae.models.ops import SQRT2, l2_normalize
from ssae.models.sae import LayerEdit, StyleEdit
from ssae.models.ssae_model import SSAE
from ssae.pipeline import (  # noqa: F401  (TensorSpec, StageSpec re-exported)
    EDIT, EDIT_PIXEL, EDIT_SPARSE, ENCODER, PREFIX, SMPN, StageSpec, TensorSpec, refine_for, smpn_for,
)

NOISE_SEED = 0

#: Graphs only CPU runtimes use: the sparse re-edit takes one edit and integer tile plans (no batch dimension).
#: The export manifest marks them `cpu_only`; the TensorRT build and the Triton repository leave them out (on GPUs
#: the fused kernel runs the crop window).
CPU_ONLY_STAGES = (EDIT_SPARSE,)


class SMPNStage(nn.Module):
    """image (B,3,S,S) in [-1,1] -> masks (B,R,S,S) in [0,1]."""

    def __init__(self, smpn):
        super().__init__()
        self.smpn = smpn

    def forward(self, image):
        return self.smpn.predict(image)


class EncoderStage(nn.Module):
    """image -> structure (B,C,S/d,S/d), texture (B,D) (both L2-normalised)."""

    def __init__(self, sae):
        super().__init__()
        self.sae = sae

    def forward(self, image):
        return self.sae.encode(image)


class _NoiseHolder(nn.Module):
    def __init__(self, sae, size: int, noise_seed: int):
        super().__init__()
        d = sae.cfg.downsampling
        for i, n in enumerate(sae.G.seeded_noise(noise_seed, (size // d, size // d))):
            self.register_buffer(f"n{i}", n, persistent=False)
        self.count = i + 1

    def list(self):
        return [getattr(self, f"n{i}") for i in range(self.count)]


class DecoderPrefixStage(nn.Module):
    """structure, texture -> h, skip: the activations entering the first injection layer and its block's skip
    (for a local tail: the skip branch's RGB contribution, 3 channels; `Generator.project_skip`)."""

    def __init__(self, sae, size: int, noise_seed: int = NOISE_SEED):
        super().__init__()
        self.sae = sae
        self.noise = _NoiseHolder(sae, size, noise_seed)

    def forward(self, structure, texture):
        h, skip = self.sae.G.prefix(structure, texture, self.noise.list())
        if self.sae.G.tail_is_local:  # the skip branch as its RGB contribution (Generator.project_skip)
            skip = self.sae.G.project_skip(skip, texture)
        return h, skip


class DecoderEditStage(nn.Module):
    """h, skip, texture, mask (B,1,H,W), noise, strength (B,) [, xi (1,1,H,W)] -> image (B,3,H,W).

    Region mode: noise is the texture-code direction n (B, D). Pixel mode: noise is z (B, H, W, Cin) for the
    (single) injection layer, drawn by the caller from the seed with `ssae.philox`.
    When the generator's tail is local (`Generator.tail_is_local`, the default), the tail's noise-injection map
    `xi` is an input and H, W may be any crop of the full image: the runtime re-edits only the ROI's window.
    """

    def __init__(self, sae, size: int, mode: str = "region", noise_seed: int = NOISE_SEED):
        super().__init__()
        self.sae, self.mode = sae, mode
        self.noise = _NoiseHolder(sae, size, noise_seed)
        self.local = sae.G.tail_is_local
        if mode == "pixel":
            if len(sae.G.injection_layers) != 1:
                raise ValueError("the pixel-mode edit graph supports one injection layer")
            layer = sae.G.layer(sae.G.injection_layers[0])
            self.register_buffer("factor", layer.pixel_factor(), persistent=False)

    def forward(self, h, skip, texture, mask, noise, strength, xi=None):
        if self.mode == "region":
            edit = StyleEdit(mask, strength=strength, region_noise=noise, mode="region")
        else:
            edit = _PixelEdit(mask, strength, noise, self.factor)
        noises = self.noise.list()
        if xi is not None:
            noises = list(noises)
            noises[self.sae.G.tail_noise_index] = xi
        if self.local:
            return self.sae.G.tail_projected(h, skip, texture, noises, edit)
        return self.sae.G.tail(h, skip, texture, noises, edit)


class _PixelEdit:
    """A StyleEdit stand-in that carries explicit pixel noise (traceable: no seeds, no host RNG)."""

    def __init__(self, mask, strength, z, factor):
        self.mask, self.strength, self.z, self.factor = mask, strength, z, factor

    def for_layer(self, layer, texture, size):
        return LayerEdit(self.mask, self.strength, pixel_noise=self.z, pixel_factor=self.factor)


class DecoderEditSparseStage(nn.Module):
    """The local tail on the tiles of a `kernels.sparse_tail.TilePlan` (region noise, one edit): the CPU re-edit.

    h_rows (R, Cin), skip_rows (R, 3), mask_rows (R, 1): the prefix outputs and the mask as row tables of the full
    image (R = S * S + 1, `sparse_tail.to_rows`); patch_idx (k^2, N), out_idx (m^2, N): the plan; texture (1, D),
    noise (1, D), strength (1,) as in `DecoderEditStage` -> rgb (m^2, N, 3): the edited image at the plan's pixels
    (everywhere else it equals the unedited image). The injection conv runs in Winograd F(m, 3) form; the tail's
    noise-injection map is a constant of the graph."""

    def __init__(self, sae, size: int, tile: int = 4, noise_seed: int = NOISE_SEED):
        super().__init__()
        g = sae.G
        if not g.tail_is_local:
            raise ValueError("the sparse edit graph needs a local tail (injection at the last block's conv2)")
        self.sae, self.tile = sae, tile
        conv = g.blocks[-1].conv2
        w = conv.w_fold if conv.w_fold is not None else conv.folded_weight()
        xi = _NoiseHolder(sae, size, noise_seed).list()[g.tail_noise_index]
        self.register_buffer("xi_rows", torch.from_numpy(sparse_tail.to_rows(xi.numpy())), persistent=False)
        self.register_buffer("u", sparse_tail.transform_weight(w, tile), persistent=False)
        bt2, _, at2 = sparse_tail.transform_2d(tile)
        self.register_buffer("bt2", bt2, persistent=False)
        self.register_buffer("at2", at2, persistent=False)

    def forward(self, h_rows, skip_rows, mask_rows, patch_idx, out_idx, texture, noise, strength):
        g = self.sae.G
        conv, rgb = g.blocks[-1].conv2, g.to_rgb
        gl = l2_normalize(texture)
        a, d = conv.style(gl), conv.direction(noise)
        y = sparse_tail.sparse_masked_modconv(h_rows, mask_rows, patch_idx, self.u, a, d, strength, self.bt2,
                                              self.at2)                                  # (m^2, N, Cout)
        flat = out_idx.reshape(-1)
        shape = (out_idx.shape[0], out_idx.shape[1], -1)
        xi = torch.index_select(self.xi_rows, 0, flat).reshape(shape) if conv.use_noise else None
        z = sparse_tail.finish_rows(y, conv.bias, xi, conv.noise_weight, conv.activate)
        w_rgb = (rgb.weight * rgb.scale)[:, :, 0, 0] * rgb.style(gl)                     # ToRGB, style folded in
        skip = torch.index_select(skip_rows, 0, flat).reshape(shape)
        return (z / SQRT2) @ w_rgb.transpose(0, 1) + rgb.bias + skip


def sparse_tile(model: SSAE) -> int | None:
    """Tile size of the sparse edit graph, or None when the model has none (non-local tail, odd size)."""
    s = model.cfg.image_size
    return 4 if model.sae.G.tail_is_local and s % 4 == 0 else None


class RefineStage(nn.Module):
    """image (coarse edit), mask -> refined image (one per ROI)."""

    def __init__(self, rb):
        super().__init__()
        self.rb = rb

    def forward(self, image, mask):
        return self.rb(image, mask)


def build_stages(model: SSAE, noise_seed: int = NOISE_SEED, single_roi_smpn: bool = True) -> dict[str, nn.Module]:
    """All stage modules of a model, by stage name."""
    s = model.cfg.image_size
    stages: dict[str, nn.Module] = {
        SMPN: SMPNStage(model.smpn),
        ENCODER: EncoderStage(model.sae),
        PREFIX: DecoderPrefixStage(model.sae, s, noise_seed),
        EDIT: DecoderEditStage(model.sae, s, "region", noise_seed),
    }
    if len(model.sae.G.injection_layers) == 1:
        stages[EDIT_PIXEL] = DecoderEditStage(model.sae, s, "pixel", noise_seed)
    tile = sparse_tile(model)
    if tile:
        stages[EDIT_SPARSE] = DecoderEditSparseStage(model.sae, s, tile, noise_seed)
    for roi in model.rois:
        stages[refine_for(roi)] = RefineStage(model.refiners[roi])
    if single_roi_smpn:
        for roi, net in zip(model.rois, model.smpn.unstack()):
            stages[smpn_for(roi)] = SMPNStage(net.eval())
    for m in stages.values():
        m.eval()
    return stages


def stage_specs(model: SSAE) -> dict[str, StageSpec]:
    """Named inputs/outputs with shapes ("batch" = dynamic) of every stage."""
    cfg = model.cfg
    s, d = cfg.image_size, cfg.sae.downsampling
    g = model.sae.G
    res = [(s // d, s // d)] + g.noise_shapes((s // d, s // d))  # input resolution of every StyledConv, + 1
    block = g.blocks[g.split_block]
    entry = block.conv1 if g.split_conv == 1 else block.conv2
    h_shape = (entry.cin,) + tuple(res[entry.index])
    skip_shape = (3 if g.tail_is_local else block.conv2.cout,) + tuple(res[block.conv2.index + 1])
    layer = g.layer(g.injection_layers[0])
    img = TensorSpec("image", ("batch", 3, s, s))
    mask = TensorSpec("mask", ("batch", 1, s, s))
    code = (TensorSpec("structure", ("batch", cfg.sae.spatial_code_ch, s // d, s // d)),
            TensorSpec("texture", ("batch", cfg.sae.global_code_ch)))
    hs = (TensorSpec("h", ("batch",) + h_shape), TensorSpec("skip", ("batch",) + skip_shape))
    strength = TensorSpec("strength", ("batch",))
    if g.tail_is_local:  # spatial dims of the edit and refine graphs are dynamic (crops)
        hs = tuple(TensorSpec(t.name, ("batch", t.shape[1], "height", "width")) for t in hs)
        mask_c = TensorSpec("mask", ("batch", 1, "height", "width"))
        img_c = TensorSpec("image", ("batch", 3, "height", "width"))
        xi = (TensorSpec("xi", (1, 1, "height", "width")),)
    else:
        mask_c, img_c, xi = mask, img, ()
    specs = {
        SMPN: StageSpec(SMPN, (img,), (TensorSpec("masks", ("batch", len(model.rois), s, s)),)),
        ENCODER: StageSpec(ENCODER, (img,), code),
        PREFIX: StageSpec(PREFIX, code, hs),
        EDIT: StageSpec(EDIT, hs + (code[1], mask_c, TensorSpec(
            "noise", ("batch", cfg.sae.global_code_ch)), strength) + xi, (img_c,)),
    }
    if len(g.injection_layers) == 1:
        zshape = ("height", "width") if g.tail_is_local else tuple(res[layer.index])
        specs[EDIT_PIXEL] = StageSpec(EDIT_PIXEL, hs + (code[1], mask_c, TensorSpec(
            "noise", ("batch",) + zshape + (layer.cin,)), strength) + xi, (img_c,))
    tile = sparse_tile(model)
    if tile:
        k2, m2 = (tile + 2) ** 2, tile * tile
        specs[EDIT_SPARSE] = StageSpec(EDIT_SPARSE, (
            TensorSpec("h_rows", ("rows", h_shape[0])), TensorSpec("skip_rows", ("rows", 3)),
            TensorSpec("mask_rows", ("rows", 1)), TensorSpec("patch_idx", (k2, "tiles"), "int64"),
            TensorSpec("out_idx", (m2, "tiles"), "int64"), TensorSpec("texture", (1, cfg.sae.global_code_ch)),
            TensorSpec("noise", (1, cfg.sae.global_code_ch)), TensorSpec("strength", (1,))),
            (TensorSpec("rgb", (m2, "tiles", 3)),))
    for roi in model.rois:
        specs[refine_for(roi)] = StageSpec(refine_for(roi), (img_c, mask_c), (TensorSpec("refined", img_c.shape),))
        specs[smpn_for(roi)] = StageSpec(smpn_for(roi), (img,), (TensorSpec("masks", ("batch", 1, s, s)),))
    return specs


def model_facts(model: SSAE) -> dict:
    """What a runtime needs to know about a model besides its graphs (also stored in the export manifest)."""
    g = model.sae.G
    facts = {
        "model_config": model.cfg.to_dict(), "rois": list(model.rois), "noise_seed": NOISE_SEED,
        "injection_layers": list(g.injection_layers), "injection_index": g.layer(g.injection_layers[0]).index,
        "local_tail": g.tail_is_local, "tail_noise_index": g.tail_noise_index,
        "rb_radius": next(iter(model.refiners.values())).radius,
        "pixel_noise_shape": None, "sparse_tile": sparse_tile(model),
    }
    pix = stage_specs(model).get(EDIT_PIXEL)
    if pix is not None:
        facts["pixel_noise_shape"] = list(next(t for t in pix.inputs if t.name == "noise").shape[1:])
    return facts
