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
    stages before it (one feed per image; `Editor.stage_feeds`)."""
    from ..runtime.editor import Editor
    from ..runtime.onnx_backends import OrtBackend

    be = OrtBackend(export_dir)
    ed = Editor(be, be.manifest, cache_size=1)
    feeds: dict[str, list] = {s: [] for s in be.stages()}
    for k, img in enumerate(images):
        for stage, feed in ed.stage_feeds(img, roi, seed + k).items():
            feeds[stage].append(feed)
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
