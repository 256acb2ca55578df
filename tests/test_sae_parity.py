"""The export-friendly SAE equals the official networks (direct, unfolded formulation) for the same weights."""
import json

import pytest
import torch

from ssae.config import SAEConfig, preset
from ssae.models.official import OfficialEncoder, OfficialGenerator
from ssae.models.sae import SwappingAutoencoder

from conftest import SHARED, random_official, rel_err, shaping_options

CASES = [
    ("tiny", preset("tiny").sae, 32),
    ("lfw128", preset("lfw128").sae, 128),
    ("no_antialias", SAEConfig(use_antialias=False, netE_scale_capacity=0.25, netG_scale_capacity=0.25,
                               global_code_ch=256), 128),
    ("wide_head", SAEConfig(netE_scale_capacity=0.125, netG_scale_capacity=0.125, global_code_ch=128,
                            netE_num_downsampling_sp=3, netG_num_base_resnet_layers=3, spatial_code_ch=16,
                            netG_use_noise=False), 64),
]


@pytest.mark.parametrize("name,cfg,size", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_matches_official_forward(name, cfg, size, batch):
    e, g = random_official(cfg)
    model = SwappingAutoencoder.from_official(e.state_dict(), g.state_dict(), crop_size=size, **shaping_options(cfg))
    x = torch.rand(batch, 3, size, size) * 2 - 1
    with torch.no_grad():
        sp_ref, gl_ref = e(x)
        sp, gl = model.encode(x)
        noises = [torch.randn(batch, 1, h, w) for h, w in model.G.noise_shapes(sp.shape[-2:])]
        y_ref = g(sp_ref, gl_ref, noises)
        y = model.decode(sp_ref, gl_ref, noise=noises)
    assert sp.shape == (batch, cfg.spatial_code_ch, size // cfg.downsampling, size // cfg.downsampling)
    assert gl.shape == (batch, cfg.global_code_ch)
    assert rel_err(sp, sp_ref) <= 1e-5
    assert rel_err(gl, gl_ref) <= 1e-5
    assert rel_err(y, y_ref) <= 1e-5


def test_matches_official_paper256_batch2():
    cfg = SAEConfig()
    e, g = random_official(cfg, seed=1)
    model = SwappingAutoencoder.from_official(e.state_dict(), g.state_dict(), crop_size=256, netG_resnet_ch=256)
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        sp_ref, gl_ref = e(x)
        sp, gl = model.encode(x)
        noises = [torch.randn(2, 1, h, w) for h, w in model.G.noise_shapes(sp.shape[-2:])]
        y_ref = g(sp_ref, gl_ref, noises)
        y = model.decode(sp, gl, noise=noises)
    assert sp.shape == (2, 8, 16, 16) and gl.shape == (2, 2048) and y.shape == (2, 3, 256, 256)
    assert rel_err(sp, sp_ref) <= 1e-5 and rel_err(gl, gl_ref) <= 1e-5
    assert rel_err(y, y_ref) <= 1e-5


def test_official_modules_have_the_official_state_dict_names():
    ref = json.loads((SHARED / "reference" / "sae_official_state_dict_256.json").read_text()) \
        if (SHARED / "reference").exists() else pytest.skip("shared/reference not found")
    cfg = SAEConfig()
    for net, key in ((OfficialEncoder(cfg), "netE"), (OfficialGenerator(cfg), "netG")):
        shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
        assert shapes == ref[key]
        assert sum(p.numel() for p in net.parameters()) == ref["total_params"][key]


def test_both_upsampling_modes_match_the_official_generator():
    cfg = preset("lfw128").sae
    e, g = random_official(cfg, seed=3)
    model = SwappingAutoencoder.from_official(e.state_dict(), g.state_dict(), **shaping_options(cfg))
    sp, gl = torch.randn(2, 8, 16, 16), torch.randn(2, 512)
    with torch.no_grad():
        ref = g(sp, gl, [torch.zeros(1, 1, h, w) for h, w in model.G.noise_shapes((16, 16))])
        outs = {}
        up = model.G.blocks[2].conv1
        for mode, k in (("separate", 3), ("subpixel", 2)):
            model.G.set_upsample_mode(mode)
            outs[mode] = model.decode(sp, gl, noise="none")
            # separate: 3x3 transposed conv + blur; subpixel: the 3x3 transposed conv as a 2x2 conv to 4 x Cout
            # channels + pixel shuffle, then the blur; constant kernels both
            assert up.upsample and up.w_fold is not None and tuple(up.w_fold.shape[-2:]) == (k, k)
            if mode == "subpixel":
                assert up.w_fold.shape[0] == 4 * up.cout
    with pytest.raises(ValueError, match="upsample mode"):
        model.G.set_upsample_mode("folded")
    for mode in outs:
        assert rel_err(outs[mode], ref) <= 1e-5, mode


def test_no_grouped_or_per_sample_convs_in_the_export_form(monkeypatch):
    """Conv weights and groups do not depend on the batch (no groups=B, no per-sample weights): the convs of a
    batch of 2 and of 3 are identical; grouped convs only appear as the constant depthwise blur."""
    import torch.nn.functional as F

    calls = []
    real_conv, real_convt = F.conv2d, F.conv_transpose2d

    def conv2d(x, w, *a, **k):
        calls.append(("conv", k.get("groups", 1), tuple(w.shape), w.data_ptr()))
        return real_conv(x, w, *a, **k)

    def convt(x, w, *a, **k):
        calls.append(("convt", k.get("groups", 1), tuple(w.shape), w.data_ptr()))
        return real_convt(x, w, *a, **k)

    model = SwappingAutoencoder(preset("tiny").sae).eval().freeze()
    monkeypatch.setattr(F, "conv2d", conv2d)
    monkeypatch.setattr(F, "conv_transpose2d", convt)
    seen = {}
    for b in (2, 3):
        calls.clear()
        with torch.no_grad():
            model.decode(*model.encode(torch.rand(b, 3, 32, 32)), noise=0)
        seen[b] = [(kind, g, shape) for kind, g, shape, _ in calls]
    assert seen[2] == seen[3] and seen[2]
    for kind, groups, shape in seen[3]:
        assert groups == 1 or (kind == "conv" and shape[1] == 1 and shape[-1] == 4)  # depthwise 4x4 blur


def test_native_blur_is_the_same_blur():
    """The official CPU blur form (single-channel convs, `blur2d_native`; the benchmark's faithful baseline) gives
    the depthwise blur's result, with positive and negative (cropping) pads, and whole official networks agree."""
    from ssae.models.official import use_native_blur
    from ssae.models.ops import blur2d, blur2d_native, blur_kernel_2d

    torch.manual_seed(0)
    x, k = torch.randn(2, 3, 11, 9), blur_kernel_2d((1, 3, 3, 1), 4.0)
    for pad in ((2, 1), (1, 1), (0, -1), (-1, 2)):
        assert torch.allclose(blur2d_native(x, k, pad), blur2d(x, k, pad), atol=1e-6), pad
    cfg = preset("lfw128").sae
    e, g = random_official(cfg, seed=5)
    shapes = SwappingAutoencoder.from_official(e.state_dict(), g.state_dict(),
                                               **shaping_options(cfg)).G.noise_shapes((16, 16))
    noises = [torch.zeros(1, 1, h, w) for h, w in shapes]
    img = torch.rand(1, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        sp, gl = e(img)
        ref = g(sp, gl, noises)
        use_native_blur(e), use_native_blur(g)
        sp2, gl2 = e(img)
        out = g(sp2, gl2, noises)
    assert rel_err(sp2, sp) <= 1e-5 and rel_err(gl2, gl) <= 1e-5 and rel_err(out, ref) <= 1e-5
    assert any(getattr(m, "native", False) for m in g.modules())


def test_channels_last_pixel_shuffle_is_the_pixel_shuffle():
    """`pixel_shuffle_nhwc` of the phase-major sub-pixel kernels (the subpixel layout) gives `F.pixel_shuffle` of
    the same kernels in channel-major order (only the channel order and the shuffle's form differ), and both are
    the stride-2 transposed conv (its first 2H x 2W outputs)."""
    import torch.nn.functional as F

    from ssae.models.ops import pixel_shuffle_nhwc, subpixel_kernels

    torch.manual_seed(0)
    w, x = torch.randn(5, 6, 3, 3), torch.randn(2, 5, 7, 9)
    wp, pad = subpixel_kernels(w)
    assert wp.shape == (24, 5, 2, 2)
    wc = wp.reshape(2, 2, 6, 5, 2, 2).permute(2, 0, 1, 3, 4, 5).reshape(24, 5, 2, 2)   # co * 4 + py * 2 + px
    xp = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    ref, out = F.pixel_shuffle(F.conv2d(xp, wc), 2), pixel_shuffle_nhwc(F.conv2d(xp, wp))
    assert out.shape == ref.shape == (2, 6, 2 * (7 + sum(pad) - 1), 2 * (9 + sum(pad) - 1))
    assert torch.equal(out, ref)
    assert torch.allclose(out, F.conv_transpose2d(x, w, stride=2)[..., :14, :18], atol=1e-5)


def test_frozen_form_folds_the_gains_of_unedited_layers_with_the_same_outputs():
    """Frozen, the encoder's convs and the generator prefix's layers carry their activation gain, residual
    1/sqrt(2) and bias in the constant weights (fewer full-resolution passes); the injection layer and the layers
    after it keep the standard form the fused kernels take. Codes, prefix and image equal the unfrozen model's,
    with random biases and noise strengths and seeded injection noise."""
    from ssae.models.sae import FoldedConv, LayerEdit

    cfg = preset("lfw128").sae
    e, g = random_official(cfg, seed=7)
    model = SwappingAutoencoder.from_official(e.state_dict(), g.state_dict(), **shaping_options(cfg)).eval()
    model.freeze(False)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if name.endswith("bias") or name.endswith("noise_weight"):
            p.data.normal_(0.0, 0.3)
    img = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        ref_codes = model.encode(img)
        ref_pre = model.G.prefix(*ref_codes, model.G.seeded_noise(3, ref_codes[0].shape[-2:]))
        ref = model.decode(*ref_codes, noise=3)
        model.freeze()
        codes = model.encode(img)
        pre = model.G.prefix(*codes, model.G.seeded_noise(3, codes[0].shape[-2:]))
        out = model.decode(*codes, noise=3)
    for a, b in zip(codes + pre, ref_codes + ref_pre):
        assert rel_err(a, b) <= 1e-5
    assert rel_err(out, ref) <= 1e-5
    G = model.G
    folded = [c.name for c in G.styled_convs() if c.gain_folded]
    first = min(G.layer(n).index for n in G.injection_layers)
    assert folded == [c.name for c in G.styled_convs() if c.index < first]
    assert all(m.b_fold is not None for m in model.E.modules() if isinstance(m, FoldedConv) and m.bias is not None)
    conv2 = G.blocks[0].conv2  # carries 1/sqrt(2) of its residual: an edit there would come out unscaled
    edit = LayerEdit(torch.ones(2, 1, 4, 4), torch.ones(2), direction=torch.zeros(2, conv2.cin))
    with pytest.raises(ValueError, match="cannot be edited"):
        conv2(torch.zeros(2, conv2.cin, 4, 4), codes[1], None, edit)
    model.freeze(False)
    assert not any(c.gain_folded for c in G.styled_convs())
