"""SSAE mask-guided style modulation (Eq. 1): math, locality, determinism, noise modes."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssae.config import SAEConfig, preset
from ssae import philox
from ssae.models.injection import (masked_modconv, modulate_input, pixel_noise_factor, region_inv_rms,
                                    style_map)
from ssae.models.ops import l2_normalize, lrelu_bias
from ssae.models.sae import StyleEdit, SwappingAutoencoder


def _model(cfg=None, seed=0):
    torch.manual_seed(seed)
    m = SwappingAutoencoder(cfg or preset("tiny").sae).eval()
    with torch.no_grad():  # non-trivial biases and noise strengths
        for n, p in m.named_parameters():
            if n.endswith("bias") or "noise" in n:
                p.normal_(0, 0.3)
    return m.freeze()


def test_default_injection_layer_is_last_but_one_modulated_conv():
    assert SwappingAutoencoder(SAEConfig()).G.injection_layers == ("UpsamplingResBlock128.conv2",)
    g = SwappingAutoencoder(preset("lfw128").sae).G
    assert g.injection_layers == (g.styled_convs()[-1].name,)


def test_closed_form_rms_equals_explicit_style_map_for_soft_masks():
    torch.manual_seed(0)
    b, c, h, w = 2, 16, 9, 7
    a, d = torch.randn(b, c, dtype=torch.float64), torch.randn(b, c, dtype=torch.float64)
    t = torch.rand(b, 1, h, w, dtype=torch.float64) * torch.tensor([0.5, 2.0], dtype=torch.float64).view(2, 1, 1, 1)
    explicit = style_map(a, d, t)
    s = a[:, :, None, None] + t * d[:, :, None, None]
    assert torch.allclose(explicit, s / s.pow(2).mean(1, keepdim=True).add(1e-8).sqrt(), atol=1e-12)
    assert torch.allclose(region_inv_rms(a, d, t) * s, explicit, atol=1e-12)
    x = torch.randn(b, c, h, w, dtype=torch.float64)
    assert torch.allclose(modulate_input(x, a, t, direction=d), x * explicit, atol=1e-12)


def test_fused_reference_equals_unfused_formulation():
    torch.manual_seed(1)
    b, cin, cout, h, w = 3, 8, 5, 11, 6
    x, wt = torch.randn(b, cin, h, w), torch.randn(cout, cin, 3, 3)
    bias, a, d = torch.randn(cout), torch.randn(b, cin), torch.randn(b, cin)
    mask, strength = torch.rand(b, 1, h, w), torch.tensor([0.0, 1.0, 2.5])
    xi, nw = torch.randn(1, 1, h, w), torch.tensor([0.7])
    y = masked_modconv(x, wt, bias, a, mask, strength, direction=d, noise=xi, noise_weight=nw)
    t = strength.view(-1, 1, 1, 1) * mask
    ref = lrelu_bias(F.conv2d(x * style_map(a, d, t), wt, padding=1) + nw * xi, bias)
    assert torch.allclose(y, ref, atol=1e-5)


def _injection_output(model, edit, x_seed=0):
    """Run the generator prefix, then only the injection layer (with and without the edit)."""
    torch.manual_seed(x_seed)
    g = model.G
    size = model.cfg.downsampling * 8
    sp, gl = model.encode(torch.rand(edit.mask.shape[0], 3, size, size) * 2 - 1)
    noises = model.resolve_noise(0, sp)
    h, _ = g.prefix(sp, gl, noises)
    layer = g.layer(g.injection_layers[0])
    gln = l2_normalize(gl)
    edited = layer(h, gln, noises[layer.index], edit.for_layer(layer, gln, h.shape[-2:]))
    zero = dataclasses.replace(edit, strength=0.0)
    base = layer(h, gln, noises[layer.index], zero.for_layer(layer, gln, h.shape[-2:]))
    return edited, base


@pytest.mark.parametrize("mode", ["region", "pixel"])
def test_hard_mask_changes_nothing_outside_the_dilated_mask(mode):
    model = _model()
    size = model.cfg.downsampling * 8
    mask = torch.zeros(2, 1, size, size)
    mask[0, :, 5:14, 8:20] = 1
    mask[1, :, 20:30, 2:9] = 1
    with torch.no_grad():
        edited, base = _injection_output(model, StyleEdit(mask, seeds=[3, 4], strength=1.0, mode=mode))
    assert edited.shape[-2:] == mask.shape[-2:]
    dilated = F.max_pool2d(mask, 3, stride=1, padding=1) > 0  # 3x3 kernel: radius 1
    diff = (edited - base).abs().amax(1, keepdim=True)
    assert torch.count_nonzero(diff[~dilated]) == 0          # exactly zero outside
    assert diff[mask > 0].mean() > 1e-2                        # a real change inside


def test_strength_zero_reproduces_the_unedited_decode():
    model = _model()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        sp, gl = model.encode(x)
        plain = model.decode(sp, gl, noise=7)
        edit = model.decode(sp, gl, noise=7, edit=StyleEdit(torch.ones(2, 1, 32, 32), seeds=[1, 2], strength=0.0))
    assert torch.allclose(plain, edit, atol=1e-5)


@pytest.mark.parametrize("mode", ["region", "pixel"])
def test_determinism_by_seed_and_batch_independence(mode):
    model = _model()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    mask = (torch.rand(3, 1, 32, 32) > 0.5).float()
    with torch.no_grad():
        sp, gl = model.encode(x)
        run = lambda seeds, s=slice(None): model.decode(sp[s], gl[s], noise=0, edit=StyleEdit(mask[s], seeds=seeds, mode=mode))
        a, b = run([5, 6, 7]), run([5, 6, 7])
        c = run([8, 6, 7])
        single = run([6], slice(1, 2))
    assert torch.equal(a, b)
    assert (a[0] - c[0]).abs().max() > 1e-3 and torch.allclose(a[1:], c[1:], atol=1e-6)
    assert torch.allclose(a[1:2], single, atol=1e-5)


def test_soft_mask_scales_the_edit_continuously():
    model = _model()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        sp, gl = model.encode(x)
        base = model.decode(sp, gl, noise=0)
        deltas = [(model.decode(sp, gl, noise=0, edit=StyleEdit(torch.full((1, 1, 32, 32), v), seeds=[1])) - base)
                  .abs().mean().item() for v in (0.0, 0.25, 1.0)]
    assert deltas[0] < 1e-6 < deltas[1] < deltas[2]


def test_pixel_noise_factor_reproduces_the_projected_covariance():
    torch.manual_seed(0)
    aw = torch.randn(12, 64, dtype=torch.float64) / 8
    lf = pixel_noise_factor(aw)
    assert torch.allclose(lf @ lf.T, aw @ aw.T, atol=1e-10)
    assert torch.allclose(lf, torch.tril(lf))
    wide = torch.randn(20, 8, dtype=torch.float64)  # Cin > style_dim: rank deficient
    lw = pixel_noise_factor(wide)
    assert torch.allclose(lw @ lw.T, wide @ wide.T, atol=1e-8)


def test_prefix_then_tail_equals_full_decode():
    model = _model()
    sp, gl = torch.randn(2, 4, 8, 8), torch.randn(2, 32)
    mask = torch.rand(2, 1, 32, 32)
    edit = StyleEdit(mask, seeds=[1, 2])
    with torch.no_grad():
        full = model.decode(sp, gl, noise=3, edit=edit)
        noises = model.resolve_noise(3, sp)
        h, skip = model.G.prefix(sp, gl, noises)
        split = model.G.tail(h, skip, gl, noises, edit)
    assert torch.equal(full, split)
    assert model.G.tail_is_local
    with torch.no_grad():  # the runtime's form: skip branch projected through the (linear, unedited) ToRGB once
        skip_rgb = model.G.project_skip(skip, gl)
        projected = model.G.tail_projected(h, skip_rgb, gl, noises, edit)
    assert skip_rgb.shape == (2, 3, 32, 32) and skip.shape[1] > 3
    assert (projected - full).abs().max() <= 1e-5 * full.abs().max()


def test_configurable_injection_layers_including_upsampling():
    cfg = dataclasses.replace(preset("tiny").sae, injection_layers=("UpsamplingResBlock16.conv1",
                                                                    "UpsamplingResBlock32.conv2"))
    model = _model(cfg)
    assert model.G.injection_layers == cfg.injection_layers
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :16, :] = 1
    with torch.no_grad():
        sp, gl = model.encode(x)
        base = model.decode(sp, gl, noise=0)
        out = model.decode(sp, gl, noise=0, edit=StyleEdit(mask, seeds=[9]))
    d = (out - base).abs().mean(1)[0]
    assert d[:12].mean() > 5 * d[20:].mean()  # the change concentrates in the ROI
    with pytest.raises(ValueError, match="unknown generator layer"):
        SwappingAutoencoder(dataclasses.replace(cfg, injection_layers=("ToRGBX",)))


def test_edit_rejects_bad_arguments():
    with pytest.raises(ValueError, match="noise mode"):
        StyleEdit(torch.ones(1, 1, 4, 4), seeds=[0], mode="global")
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        StyleEdit(torch.ones(1, 4, 4), seeds=[0])
    with pytest.raises(ValueError, match="seed"):
        philox.gaussian(-1, philox.STREAM_REGION, 4)


def test_philox_known_answers_and_gaussian_statistics():
    kat = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
           ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
           ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for ctr, key, want in kat:
        got = philox.philox4x32(np.array([ctr], dtype=np.uint64).astype(np.uint32), key)[0]
        assert tuple(int(v) for v in got) == want
    z = philox.gaussian(123, philox.STREAM_REGION, 200_000)
    assert z.dtype == np.float32 and abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert np.array_equal(z[:1000], philox.gaussian(123, philox.STREAM_REGION, 1000))  # prefix-stable
    assert not np.array_equal(z[:16], philox.gaussian(124, philox.STREAM_REGION, 16))
    assert not np.array_equal(z[:16], philox.gaussian(123, philox.STREAM_PIXEL, 16))
