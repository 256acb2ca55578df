"""The pipeline, described once: its stages, their names, and how a single region edit wires them.

    image -> SMPN (masks) -> ROI mask -> encoder (structure, texture) -> decoder prefix (h, skip)
          -> edit tail (mask, noise, strength) -> RB of the ROI (refined)

Every backend runs stages with these names and their `StageSpec`s (a model's: `ssae.export.stages.stage_specs`,
carried to the runtimes by an export's manifest). The Editor runs them one by one on the host; the device chains
(PyTorch on CUDA, TensorRT) and the Triton ensembles walk `chain_stages`, binding each stage's tensors to the
buffers `slot` names, so an output feeds the next stage without a copy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .errors import ParamError

#: The five-ROI SMPN: image -> masks (B, R, S, S).
SMPN = "smpn"
#: The SAE encoder: image -> structure, texture.
ENCODER = "sae_encoder"
#: The decoder up to the injection layer: structure, texture -> h, skip (cached per photo).
PREFIX = "sae_decoder_prefix"
#: The edit tail, region noise: h, skip, texture, mask, noise, strength (, xi) -> image.
EDIT = "sae_decoder_edit"
#: The edit tail, per-pixel noise.
EDIT_PIXEL = "sae_decoder_edit_pixel"
#: The edit tail on the tiles touching the mask (CPU runtimes).
EDIT_SPARSE = "sae_decoder_edit_sparse"
#: The edit tail with its injection layer as one custom node (the TensorRT plugin's graph).
EDIT_PLUGIN = "sae_decoder_edit_plugin"
#: Glue of the device chains: masks, roi -> the ROI's mask quantised to 8-bit levels (the Editor does it on the
#: host): one channel of the five-ROI masks, or the single-ROI SMPN's output as it is.
ROI_MASK = "roi_mask"

#: Chain kinds: the whole edit of a new image, or a new edit of the image the device holds.
FULL, REEDIT = "full", "reedit"


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a stage: its shape (ints, or symbolic dims such as "batch", "height", "width") and
    element type."""

    name: str
    shape: tuple
    dtype: str = "float32"


@dataclass(frozen=True)
class StageSpec:
    """A stage's named inputs and outputs (`ssae.export.stages.stage_specs` gives them for a model; an export's
    manifest carries them to the runtimes)."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def smpn_for(roi: str) -> str:
    """The single-ROI SMPN stage: image -> the ROI's mask (B, 1, S, S)."""
    return f"smpn_{roi}"


def chain_smpn(roi: str, single_roi: bool, stages) -> str:
    """The SMPN stage a device chain runs for `roi`: its single-ROI graph when asked for and among `stages`, else the
    five-ROI SMPN."""
    return smpn_for(roi) if single_roi and smpn_for(roi) in stages else SMPN


def refine_for(roi: str) -> str:
    """The ROI's refinement block: image, mask -> refined."""
    return f"refine_{roi}"


def is_smpn(stage: str) -> bool:
    return stage == SMPN or stage.startswith("smpn_")


def chain_stages(roi: str, smpn: str, kind: str = FULL) -> list[str]:
    """The stages of one device chain, in order (`smpn`: SMPN or `smpn_for(roi)`). A re-edit starts from the held
    codes and masks of the last full chain."""
    tail = [ROI_MASK, EDIT, refine_for(roi)]
    if kind == REEDIT:
        return tail
    return [smpn, ROI_MASK, ENCODER, PREFIX, EDIT, refine_for(roi)]


def slot(stage: str, tensor: str) -> str:
    """The buffer a stage's tensor lives in along a chain: equal slots = an output read directly as the next
    stage's input."""
    if stage.startswith("refine_"):
        return {"image": "coarse", "mask": "mask", "refined": "refined"}[tensor]
    if stage.startswith(EDIT):
        if tensor == "image":
            return "coarse"
        if tensor == "noise" and stage == EDIT_PIXEL:
            return "pixel_noise"
        return tensor
    if is_smpn(stage):
        return {"image": "image", "masks": "masks"}[tensor]
    return tensor  # encoder, prefix, roi_mask: shared names (structure, texture, h, skip, masks, roi, mask)


#: The slots a full chain leaves on the device for the re-edits.
HELD = ("h", "skip", "texture", "masks")


def check_edit(roi: str, rois: Sequence[str], strength: float) -> int:
    """The one check of an edit's ROI and strength (the Editor and the device chains): the ROI's index in the
    model's `rois`; ParamError (a ValueError) for an unknown ROI or a non-finite strength."""
    if roi not in rois:
        raise ParamError(f"unknown ROI {roi!r} (choose from {', '.join(rois)})")
    try:
        finite = math.isfinite(float(strength))
    except (TypeError, ValueError):
        finite = False
    if not finite:
        raise ParamError(f"strength must be a finite number, got {strength}")
    return list(rois).index(roi)
