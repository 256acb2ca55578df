"""Loading official checkpoints: .pth paths, combined E./G. checkpoints, option handling."""
import pytest
import torch

from ssae.config import preset
from ssae.models.sae import SwappingAutoencoder

from conftest import random_official, rel_err, shaping_options


@pytest.fixture(scope="module")
def official():
    cfg = preset("tiny").sae
    e, g = random_official(cfg, seed=5)
    return cfg, e, g


def _reference(e, g, x, model):
    with torch.no_grad():
        sp, gl = e(x)
        noises = [torch.zeros(1, 1, h, w) for h, w in model.G.noise_shapes(sp.shape[-2:])]
        return g(sp, gl, noises)


def test_from_pth_paths(tmp_path, official):
    cfg, e, g = official
    torch.save(e.state_dict(), tmp_path / "latest_net_E.pth")
    torch.save(g.state_dict(), tmp_path / "latest_net_G.pth")
    model = SwappingAutoencoder.from_official(str(tmp_path / "latest_net_E.pth"), tmp_path / "latest_net_G.pth",
                                              **shaping_options(cfg), crop_size=32, netG_resnet_ch=256)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        y = model.decode(*model.encode(x), noise="none")
    assert rel_err(y, _reference(e, g, x, model)) <= 1e-5


def test_from_combined_checkpoint_with_prefixes(tmp_path, official):
    cfg, e, g = official
    sd = {f"E.{k}": v for k, v in e.state_dict().items()}
    sd.update({f"G.{k}": v for k, v in g.state_dict().items()})
    sd["D.convs.0.0.weight"] = torch.zeros(4, 3, 1, 1)          # discriminators are ignored
    sd["Dpatch.convs.0.0.weight"] = torch.zeros(4, 3, 1, 1)
    torch.save(sd, tmp_path / "latest_checkpoint.pth")
    model = SwappingAutoencoder.from_official(tmp_path / "latest_checkpoint.pth", **shaping_options(cfg))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        y = model.decode(*model.encode(x), noise="none")
    assert rel_err(y, _reference(e, g, x, model)) <= 1e-5


def test_unknown_option_is_rejected(official):
    cfg, e, g = official
    with pytest.raises(TypeError, match="netE_scale_capacty"):
        SwappingAutoencoder.from_official(e.state_dict(), g.state_dict(), netE_scale_capacty=1.0)


def test_shape_mismatch_is_an_error(official):
    cfg, e, g = official
    with pytest.raises(RuntimeError, match="size mismatch"):
        SwappingAutoencoder.from_official(e.state_dict(), g.state_dict())  # default (paper) shapes


def test_combined_checkpoint_without_prefixes_is_an_error(official):
    cfg, e, g = official
    with pytest.raises(ValueError, match="E\\.\\* and G\\.\\*"):
        SwappingAutoencoder.from_official(e.state_dict(), **shaping_options(cfg))
