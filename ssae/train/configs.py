"""Training configurations (dataclasses; no heavy imports, so the CLI can build its options anywhere)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    """Where the training data lives. Any combination; which ones a trainer uses is documented per trainer."""

    lfw: str | None = None                 # LFW Part Labels root (images/, labels/, train.txt ...)
    lfw_derived: str | None = None         # landmark-derived nose/eyes/lips masks (ssae data lfw-masks)
    celeba: str | None = None              # CelebAMask-HQ release root
    folder: str | None = None              # plain folder layout: images/, masks/<roi>/
    unlabelled: tuple[str, ...] = ()       # extra unlabelled image folders (SAE only)
    cache: str | None = None               # decoded-array cache folder (default ~/.cache/ssae)


@dataclass
class TrainConfig:
    """Options common to every trainer."""

    out: str = "runs/train"               # run folder: checkpoints, metrics.jsonl, final weights
    preset: str = "lfw128"
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"                  # auto | cpu | cuda
    bf16: str = "auto"                    # auto (CPU with AMX, or CUDA) | on | off
    threads: int = 0                      # CPU threads (0 = all)
    log_every: int = 10
    ckpt_every: int = 200
    eval_every: int = 0                   # 0 = once per epoch where the trainer evaluates
    max_minutes: float = 0.0              # stop (checkpoint + weights so far) after this wall time; 0 = no limit
    init: str | None = None               # start this component from an ssae checkpoint (e.g. the bundled model)
    data: DataConfig = field(default_factory=DataConfig)


@dataclass
class SMPNTrainConfig(TrainConfig):
    lr: float = 1e-3
    batch_size: int = 16
    weight_decay: float = 1e-4
    #: Soft-Dice term added to the paper's BCE: the eyes and lips cover <1% of a face image, and BCE alone
    #: learns to predict nothing there for a long time. 0 = the paper's plain BCE.
    dice_weight: float = 1.0


@dataclass
class SAETrainConfig(TrainConfig):
    lr: float = 0.002
    warmup_steps: int = 0
    lambda_L1: float = 1.0
    lambda_GAN: float = 1.0
    lambda_PatchGAN: float = 1.0
    lambda_R1: float = 10.0
    lambda_patch_R1: float = 1.0
    #: Late texture swap (this project's addition, not Park et al.'s): decode image A with image B's texture code
    #: at the injection layer only and ask, by L1, for A recoloured with B's per-channel mean and std (Reinhard
    #: colour transfer in RGB). It teaches the layer SSAE edits to carry colour without a discriminator; 0 = off.
    lambda_texture_swap: float = 0.0
    r1_every: int = 16
    patch_num_crops: int = 8
    patch_min_scale: float = 1 / 8
    patch_max_scale: float = 1 / 4
    patch_size: int = 0              # 0 = image_size // 4
    d_base_ch: int = 16
    d_max_ch: int = 256
    init_official: str | None = None  # official combined checkpoint (E.*, G.*) to start from
    eval_images: int = 64


@dataclass
class RBTrainConfig(TrainConfig):
    lr: float = 2e-4
    sae: str = ""                    # trained SAE weights (checkpoint file or folder)
    smpn: str = ""                   # trained SMPN weights (for images without a label of the ROI)
    lambda_rec: float = 1.0
    lambda_gan: float = 0.5
    strength_min: float = 0.5
    strength_max: float = 1.5
    d_channels: int = 32
