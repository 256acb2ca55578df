"""INT8 post-training quantization of an ONNX export (static, QDQ format, symmetric, per-channel weights).

Each graph is calibrated on real data flowing through the pipeline: images -> `smpn` and `sae_encoder`; the
encoder's fp32 outputs -> `sae_decoder_prefix`; the prefix outputs with the SMPN's masks and seeded noise ->
`sae_decoder_edit`; its outputs -> `refine_<roi>`. The result is a new export folder (same stage names, manifest
`precision: int8`) that the ONNX Runtime and OpenVINO backends run as is, and that TensorRT can consume (QDQ).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..export.onnx_export import read_manifest, sha256_file
from ..fileio import atomic_write
from ..kernels import philox

METHODS = ("minmax", "entropy", "percentile")


@dataclass
class Int8Config:
    method: str = "minmax"
    stages: tuple[str, ...] = ()             # () = every stage except the plugin graph
    exclude: dict[str, list[str]] = field(default_factory=dict)  # stage -> node names kept in float
    per_channel: bool = True


class _Reader:
    """onnxruntime CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - not used by the calibrators here
        pass


def stage_feeds(export_dir: str | os.PathLike, images: np.ndarray, roi: str = "hair", seed: int = 0) -> dict:
    """Calibration feeds of every stage from uint8 images (N, S, S, 3): each stage gets the fp32 outputs of the
    stages before it (one feed per image)."""
    from ..runtime.editor import Editor
    from ..runtime.onnx_backends import OrtBackend

    be = OrtBackend(export_dir)
    ed = Editor(be, be.manifest, crop=False)
    feeds: dict[str, list] = {s: [] for s in be.stages()}
    ridx = ed.rois.index(roi)
    for k, img in enumerate(images):
        x = (img.astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0).astype(np.float32)
        masks = be.run("smpn", {"image": x})["masks"]
        codes = be.run("sae_encoder", {"image": x})
        pre = be.run("sae_decoder_prefix", {"structure": codes["structure"], "texture": codes["texture"]})
        feeds["smpn"].append({"image": x})
        feeds["sae_encoder"].append({"image": x})
        feeds["sae_decoder_prefix"].append({"structure": codes["structure"], "texture": codes["texture"]})
        m = masks[:, ridx: ridx + 1]
        edit = {"h": pre["h"], "skip": pre["skip"], "texture": codes["texture"], "mask": m,
                "noise": philox.gaussian_batch([seed + k], philox.STREAM_REGION, (ed.global_code_ch,)),
                "strength": np.ones(1, np.float32)}
        if ed.local:
            edit["xi"] = ed.xi
        feeds["sae_decoder_edit"].append(edit)
        y = be.run("sae_decoder_edit", edit)["image"]
        for i, r in enumerate(ed.rois):
            if f"refine_{r}" in feeds:
                feeds[f"refine_{r}"].append({"image": y, "mask": masks[:, i: i + 1]})
        if "sae_decoder_edit_pixel" in feeds:
            pix = dict(edit)
            pix["noise"] = philox.pixel_window([seed + k], philox.STREAM_PIXEL + int(ed.injection_index),
                                               (ed.size, ed.size), (0, ed.size, 0, ed.size),
                                               int(ed.pixel_noise_shape[-1]))
            feeds["sae_decoder_edit_pixel"].append(pix)
        for s in [s for s in feeds if s.startswith("smpn_")]:
            feeds[s].append({"image": x})
    return feeds


def quantize_export(export_dir: str | os.PathLike, out_dir: str | os.PathLike, images: np.ndarray,
                    cfg: Int8Config | None = None, progress=None) -> dict:
    """Write an INT8 (QDQ) copy of an export folder calibrated on `images`; returns its manifest."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    cfg = cfg or Int8Config()
    if cfg.method not in METHODS:
        raise ValueError(f"unknown calibration method {cfg.method!r} (choose from {', '.join(METHODS)})")
    src, out = Path(export_dir), Path(out_dir)
    manifest = read_manifest(src)
    out.mkdir(parents=True, exist_ok=True)
    feeds = stage_feeds(src, images)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.method]
    stages = [s for s in (cfg.stages or manifest["stages"]) if not manifest["stages"][s].get("plugin")]
    new = dict(manifest)
    new["stages"] = {}
    for name in manifest["stages"]:
        entry = dict(manifest["stages"][name])
        path = out / entry["file"]
        if name in stages:
            if progress:
                progress(name)
            tmp = out / f".{entry['file']}.tmp"
            quantize_static(str(src / entry["file"]), str(tmp), _Reader(feeds[name]), quant_format=QuantFormat.QDQ,
                            per_channel=cfg.per_channel, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=method,
                            nodes_to_exclude=cfg.exclude.get(name) or None,
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
            os.replace(tmp, path)
            entry["precision"] = "int8"
        else:
            shutil.copy(src / entry["file"], path)
        entry["sha256"] = sha256_file(path)
        new["stages"][name] = entry
    new["precision"] = "int8"
    new["calibration"] = {"method": cfg.method, "images": int(len(images)), "source_export": str(src),
                          "per_channel": cfg.per_channel, "symmetric": True, "format": "QDQ"}
    atomic_write(out / "manifest.json", lambda tmp: Path(tmp).write_text(json.dumps(new, indent=1)))
    return new
