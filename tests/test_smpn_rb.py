"""SMPN (ResNet18 U-Net, batched bank) and the refinement block."""
import pytest
import torch

from ssae.config import RBConfig, SMPNConfig, preset
from ssae.models.refine import RefinementBlock
from ssae.models.smpn import SMPN, load_resnet18_weights

# torchvision resnet18 encoder parameter names (state_dict order), without the classifier.
RESNET18_KEYS = ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                 "bn1.num_batches_tracked"]
for _l in range(1, 5):
    for _b in range(2):
        for _c in (1, 2):
            RESNET18_KEYS += [f"layer{_l}.{_b}.conv{_c}.weight"] + [
                f"layer{_l}.{_b}.bn{_c}.{s}" for s in ("weight", "bias", "running_mean", "running_var",
                                                       "num_batches_tracked")]
        if _l > 1 and _b == 0:
            RESNET18_KEYS += [f"layer{_l}.0.downsample.0.weight"] + [
                f"layer{_l}.0.downsample.1.{s}" for s in ("weight", "bias", "running_mean", "running_var",
                                                          "num_batches_tracked")]
RESNET18_SHAPES = {"conv1.weight": (64, 3, 7, 7), "layer2.0.conv1.weight": (128, 64, 3, 3),
                   "layer4.1.conv2.weight": (512, 512, 3, 3), "layer3.0.downsample.0.weight": (256, 128, 1, 1)}


def test_single_roi_smpn_has_torchvision_resnet18_encoder_names():
    sd = SMPN(SMPNConfig(), n_rois=1).state_dict()
    assert set(RESNET18_KEYS) <= set(sd)
    for k, shape in RESNET18_SHAPES.items():
        assert tuple(sd[k].shape) == shape


def test_imagenet_weights_load_into_every_roi():
    model = SMPN(SMPNConfig(), n_rois=5)
    torch.manual_seed(0)
    fake = {k: torch.randn(RESNET18_SHAPES.get(k, ())) if k in RESNET18_SHAPES else None for k in RESNET18_SHAPES}
    fake["fc.weight"] = torch.randn(1000, 512)
    loaded = load_resnet18_weights(model, fake)
    assert "fc.weight" not in loaded and "conv1.weight" in loaded
    assert torch.equal(model.conv1.weight[64:128], fake["conv1.weight"])
    assert torch.equal(model.layer4[1].conv2.weight[512 * 4:], fake["layer4.1.conv2.weight"])
    with pytest.raises(ValueError, match="width"):
        load_resnet18_weights(SMPN(SMPNConfig(width=16)), fake)


@pytest.mark.parametrize("size", [32, 64, 96])
def test_bank_equals_the_five_single_networks(size):
    cfg = SMPNConfig(width=8)
    torch.manual_seed(0)
    singles = [SMPN(cfg, n_rois=1) for _ in range(5)]
    for m in singles:  # realistic batch-norm statistics and a non-trivial classifier
        with torch.no_grad():
            for _ in range(3):
                m(torch.rand(4, 3, size, size) * 2 - 1)
            m.classifier.weight.normal_(0, 3.0)
        m.eval()
    bank = SMPN.stack(singles).eval()
    x = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        out = bank.predict(x)
        ref = torch.cat([m.predict(x) for m in singles], 1)
    assert out.shape == (2, 5, size, size)
    assert torch.allclose(out, ref, atol=1e-5)
    assert 0 <= out.min() and out.max() <= 1
    assert out.std(dim=(2, 3)).min() > 1e-3  # spatially varying masks, not a constant
    back = bank.unstack()
    with torch.no_grad():
        assert torch.allclose(back[3].predict(x), singles[3].predict(x), atol=1e-6)


def test_refinement_block_is_identity_at_init_and_fuses_by_mask():
    rb = RefinementBlock(RBConfig(channels=8))
    y = torch.rand(2, 3, 16, 16) * 2 - 1
    m = (torch.rand(2, 1, 16, 16) > 0.5).float()
    assert torch.equal(rb(y, m), y)
    yp = torch.randn_like(y)
    assert torch.equal(rb.fuse(yp, y, m), torch.where(m > 0, yp, y))
    torch.manual_seed(0)
    for p in rb.parameters():
        torch.nn.init.normal_(p, 0, 0.1)
    out = rb(y, m)
    assert out.shape == y.shape and not torch.allclose(out, y)


@pytest.mark.parametrize("name", ["tiny", "lfw128", "paper256", "official512"])
def test_preset_shapes(name):
    """Shapes of every component for every preset (meta tensors: no compute)."""
    from ssae.models.ssae_model import SSAE

    cfg = preset(name)
    with torch.device("meta"):
        model = SSAE(cfg)
        s = cfg.image_size
        x = torch.empty(2, 3, s, s)
        sp, gl = model.sae.encode(x)
        img = model.sae.decode(sp, gl, noise="none")
        masks = model.smpn(x)
        ref = model.refiners["hair"](img, masks[:, :1])
    d = s // cfg.sae.downsampling
    assert tuple(sp.shape) == (2, cfg.sae.spatial_code_ch, d, d)
    assert tuple(gl.shape) == (2, cfg.sae.global_code_ch)
    assert tuple(img.shape) == (2, 3, s, s)
    assert tuple(masks.shape) == (2, 5, s, s)
    assert tuple(ref.shape) == (2, 3, s, s)
    if name in ("paper256", "official512"):
        assert tuple(sp.shape[1:]) == (8, s // 16, s // 16) and gl.shape[1] == 2048
