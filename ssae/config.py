"""Model configuration: dataclasses and named presets.

Every network in the project is shaped by one of these dataclasses; nothing reads a dict of strings.
`SAEConfig` uses the official Swapping Autoencoder option names (taesungp/swapping-autoencoder-pytorch)
so that `SwappingAutoencoder.from_official(..., **official_options)` maps one to one.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import SSAEError


class ConfigError(SSAEError, ValueError):
    """A model config that cannot be read (unknown or missing keys, bad values)."""


#: The five regions of interest, in the order every multi-ROI tensor uses.
ROIS: tuple[str, ...] = ("hair", "skin", "nose", "eyes", "lips")


@dataclass(frozen=True)
class SAEConfig:
    """Swapping Autoencoder shape options (official names and defaults)."""

    netE_scale_capacity: float = 1.0
    netE_num_downsampling_sp: int = 4
    netE_num_downsampling_gl: int = 2
    netE_nc_steepness: float = 2.0
    spatial_code_ch: int = 8
    global_code_ch: int = 2048
    netG_scale_capacity: float = 1.0
    netG_num_base_resnet_layers: int = 2
    netG_use_noise: bool = True
    use_antialias: bool = True
    num_classes: int = 0
    #: Generator layers (StyledConv names such as "UpsamplingResBlock128.conv2") whose texture code is made
    #: spatial for a localized edit. Empty = the default: the last-but-one modulated conv (the last 3x3 conv
    #: before ToRGB).
    injection_layers: tuple[str, ...] = ()

    # Official option names that exist but do not shape the networks: accepted and ignored by from_official.
    IGNORED_OPTIONS = frozenset({
        "crop_size", "load_size", "netG_resnet_ch", "preprocess", "batch_size", "num_gpus", "dataroot",
        "dataset_mode", "name", "model", "optimizer", "lr", "beta1", "beta2", "R1_once_every",
        "lambda_R1", "lambda_patch_R1", "lambda_L1", "lambda_GAN", "lambda_PatchGAN", "patch_size",
        "patch_num_crops", "patch_min_scale", "patch_max_scale", "patch_use_aggregation",
        "netPatchD_scale_capacity", "netPatchD_max_nc", "netD_scale_capacity", "netE", "netG", "netD",
        "netPatchD", "total_nimgs", "evaluation_metrics", "isTrain", "checkpoints_dir", "gpu_ids",
    })

    @classmethod
    def from_options(cls, **options: Any) -> "SAEConfig":
        """Build from official option names; non-shaping official options are ignored.

        Unknown names that are not known official options raise TypeError, so typos are caught.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for k, v in options.items():
            if k in names:
                kwargs[k] = tuple(v) if k == "injection_layers" else v
            elif k in cls.IGNORED_OPTIONS:
                continue
            else:
                raise TypeError(f"unknown Swapping Autoencoder option {k!r}")
        return cls(**kwargs)

    # --- derived channel rules (official) ---
    def enc_nc(self, idx: int) -> int:
        nc = self.netE_nc_steepness ** (5 + idx) * self.netE_scale_capacity
        return int(round(min(self.global_code_ch, int(round(nc)))))

    def gen_nf(self, num_up: int) -> int:
        ch = 128 * (2 ** (self.netE_num_downsampling_sp - num_up))
        return int(min(512, ch) * self.netG_scale_capacity)

    @property
    def style_dim(self) -> int:
        return self.global_code_ch + self.num_classes

    @property
    def downsampling(self) -> int:
        """Image size / structure-code size."""
        return 2 ** self.netE_num_downsampling_sp


@dataclass(frozen=True)
class SMPNConfig:
    """Semantic mask prediction network: ResNet18 encoder U-Net, one per ROI."""

    rois: tuple[str, ...] = ROIS
    #: Channels of the ResNet18 stem (64 = torchvision's ResNet18, whose ImageNet weights then load).
    width: int = 64
    #: Channels of each decoder level, as a fraction of the encoder level's channels.
    decoder_ratio: float = 0.5


@dataclass(frozen=True)
class RBConfig:
    """Refinement block: full-resolution convs with skips, mask fusion, more convs (one per ROI)."""

    channels: int = 32
    pre_layers: int = 3
    post_layers: int = 2


@dataclass(frozen=True)
class SSAEConfig:
    """A whole SSAE model: image size, SAE, SMPN and RB shapes."""

    name: str = "paper256"
    image_size: int = 256
    sae: SAEConfig = field(default_factory=SAEConfig)
    smpn: SMPNConfig = field(default_factory=SMPNConfig)
    rb: RBConfig = field(default_factory=RBConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "SSAEConfig":
        """The config from its dict form (`to_dict`); unknown or missing keys raise `ConfigError`."""
        if not isinstance(d, dict):
            raise ConfigError(f"model config must be an object, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown model config key {unknown[0]!r}")
        if "image_size" not in d:
            raise ConfigError("model config has no image_size")
        try:
            return cls._from_dict(d)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"bad model config: {str(e).splitlines()[0]}") from None

    @classmethod
    def _from_dict(cls, d: dict) -> "SSAEConfig":
        sae = dict(d.get("sae", {}))
        if "injection_layers" in sae:
            sae["injection_layers"] = tuple(sae["injection_layers"])
        smpn = dict(d.get("smpn", {}))
        if "rois" in smpn:
            smpn["rois"] = tuple(smpn["rois"])
        return cls(name=d.get("name", "custom"), image_size=int(d.get("image_size", 256)),
                   sae=SAEConfig(**sae), smpn=SMPNConfig(**smpn), rb=RBConfig(**d.get("rb", {})))

    @classmethod
    def from_json(cls, s: str) -> "SSAEConfig":
        try:
            d = json.loads(s)
        except (TypeError, json.JSONDecodeError) as e:
            raise ConfigError(f"model config is not JSON: {e}") from None
        return cls.from_dict(d)


def _presets() -> dict[str, SSAEConfig]:
    return {
        # Official SAE defaults at 256 (the paper's SSAE setting).
        "paper256": SSAEConfig(name="paper256", image_size=256),
        # Official FFHQ-512 model shape.
        "official512": SSAEConfig(name="official512", image_size=512),
        # Small model trained on this project's 2-core CPU on LFW at 128 px. Structure code 16x16x8
        # (3 downsamplings: at 128 px a 8x8 code loses too much face geometry for a short training run).
        "lfw128": SSAEConfig(
            name="lfw128", image_size=128,
            sae=SAEConfig(netE_scale_capacity=0.5, netE_num_downsampling_sp=3, netE_num_downsampling_gl=2,
                          spatial_code_ch=8, global_code_ch=512, netG_scale_capacity=0.25,
                          netG_num_base_resnet_layers=2),
            smpn=SMPNConfig(width=16, decoder_ratio=0.5),
            rb=RBConfig(channels=16, pre_layers=3, post_layers=2),
        ),
        # Very small configuration for unit tests.
        "tiny": SSAEConfig(
            name="tiny", image_size=32,
            sae=SAEConfig(netE_scale_capacity=0.125, netE_num_downsampling_sp=2, netE_num_downsampling_gl=1,
                          spatial_code_ch=4, global_code_ch=32, netG_scale_capacity=0.0625,
                          netG_num_base_resnet_layers=1),
            smpn=SMPNConfig(width=8),
            rb=RBConfig(channels=8, pre_layers=2, post_layers=1),
        ),
    }


PRESETS: dict[str, SSAEConfig] = _presets()


def preset(name: str) -> SSAEConfig:
    """Return a named preset (paper256, official512, lfw128, tiny)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})") from None
