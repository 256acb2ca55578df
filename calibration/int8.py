"""INT8 post-training quantization of an ONNX export (static, QDQ format, symmetric, per-channel weights).

Each graph is calibrated on real data flowing through the pipeline: images -> `smpn` and `sae_encoder`; the
encoder's fp32 outputs -> `sae_decoder_prefix`; the prefix outputs with the SMPN's masks and seeded noise ->
`sae_decoder_edit`; its outputs -> `refine_<roi>`. The result is a new export folder (same stage names, manifest
`precision: int8`, its own shared weights file) that the ONNX Runtime and OpenVINO backends run as is, and that
TensorRT can consume (QDQ).
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssae.export.onnx_export import finish_export, read_manifest
from ssae.export.weights import load_self_contained
from ssae.fileio import atomic_write

METHODS = ("minmax", "entropy", "percentile")
ACTIVATIONS = ("s8", "u8")
#: Ops whose inputs are quantized by default: the MAC-heavy ones. Quantizing the elementwise style/normalisation
#: ops too only adds Q/DQ pairs that run in float anyway (measured slower on ONNX Runtime here). ONNX Runtime's CPU
#: provider has no int8 ConvTranspose, so for its u8 profile ConvTranspose stays float (a quantized one runs as
#: float between Q/DQ pairs, slower than leaving it float); TensorRT (s8) quantizes it. `ssae calibrate` quantizes
#: the decoder's subpixel layout (ordinary convs, no ConvTranspose) by default, so this only matters for exports
#: in the default layout.
DEFAULT_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CPU_OP_TYPES = ("Conv", "Gemm", "MatMul")


@dataclass
class Int8Config:
    """method: range calibration; activations: "s8" = symmetric int8 (what TensorRT consumes; ONNX Runtime's CPU
    backend runs it as uint8, `runtime.qdq_u8`) or "u8" = asymmetric uint8 (ranges fitted to one-sided activations,
    not TensorRT-compatible); weights are always symmetric per-channel int8."""

    method: str = "minmax"
    stages: tuple[str, ...] = ()             # () = every stage except the plugin graph
    exclude: dict[str, list[str]] = field(default_factory=dict)  # stage -> node names kept in float
    keep_float: tuple[str, ...] = ()         # whole stages left in float (exclusion search)
    per_channel: bool = True
    activations: str = "s8"
    op_types: tuple[str, ...] = ()           # () = DEFAULT_OP_TYPES for s8, CPU_OP_TYPES for u8

    def quantized_ops(self) -> tuple[str, ...]:
        return self.op_types or (DEFAULT_OP_TYPES if self.activations == "s8" else CPU_OP_TYPES)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown calibration method {self.method!r} (choose from {', '.join(METHODS)})")
        if self.activations not in ACTIVATIONS:
            raise ValueError(f"unknown int8 activation type {self.activations!r} (choose from {', '.join(ACTIVATIONS)})")


def _reader_class():
    from onnxruntime.quantization import CalibrationDataReader

    class StageDataReader(CalibrationDataReader):
        """Feeds of one graph, each made of the real outputs of the stages before it (`stage_feeds`)."""

        def __init__(self, feeds: list[dict[str, np.ndarray]]):
            self.feeds = feeds
            self._i = 0

        def get_next(self):
            if self._i >= len(self.feeds):
                return None
            self._i += 1
            return self.feeds[self._i - 1]

        def rewind(self):
            self._i = 0

        def __len__(self):
            return len(self.feeds)

    return StageDataReader


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def data_reader(feeds: list[dict[str, np.ndarray]]):
    """An onnxruntime `CalibrationDataReader` over a graph's calibration feeds."""
    return _reader_class()(feeds)


def stage_feeds(export_dir: str | os.PathLike, images: np.ndarray, roi: str = "hair", seed: int = 0) -> dict:
    """Calibration feeds of every stage from uint8 images (N, S, S, 3): each stage gets the fp32 outputs of the
    stages before it (one feed per image; `Editor.stage_feeds`)."""
    from ssae.runtime.editor import Editor
    from ssae.runtime.onnx_backends import OrtBackend

    be = OrtBackend(export_dir)
    ed = Editor(be, cache_size=1)
    feeds: dict[str, list] = {}
    for k, img in enumerate(images):
        for stage, feed in ed.stage_feeds(img, roi, seed + k).items():
            feeds.setdefault(stage, []).append(feed)
    return feeds


def quantize_export(export_dir: str | os.PathLike, out_dir: str | os.PathLike, images: np.ndarray,
                    cfg: Int8Config | None = None, progress=None, cache_dir: str | os.PathLike | None = None,
                    feeds: dict | None = None) -> dict:
    """Write an INT8 (QDQ) copy of an export folder calibrated on `images`; returns its manifest.

    cache_dir: the calibration cache (tensor ranges per graph, ONNX Runtime's JSON format, keyed by graph and
    method). When a graph's cache file exists, its calibration inference is skipped: re-quantizing with other
    exclusions or activation types costs no calibration pass."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    cfg = cfg or Int8Config()
    cfg.validate()
    src, out = Path(export_dir), Path(out_dir)
    manifest = read_manifest(src)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.method]
    # cpu_only graphs (the sparse Winograd re-edit) stay fp32: their Winograd-domain tensors span a much wider
    # range than the image-domain ones, and they are already a small share of a re-edit
    stages = [s for s in (cfg.stages or manifest["stages"]) if not manifest["stages"][s].get("plugin")
              and not manifest["stages"][s].get("cpu_only") and s not in cfg.keep_float]
    cache_file = lambda name: None if cache is None else cache / f"{name}.{cfg.method}.{manifest['stages'][name]['sha256'][:12]}.json"
    need = [s for s in stages if cache_file(s) is None or not cache_file(s).exists()]
    if feeds is None and need:
        feeds = stage_feeds(src, images)
    act = QuantType.QInt8 if cfg.activations == "s8" else QuantType.QUInt8
    new = dict(manifest)
    new["stages"] = {}
    for name in manifest["stages"]:
        entry = dict(manifest["stages"][name])
        path = out / entry["file"]
        if name in stages:
            if progress:
                progress(name)
            tmp = out / f".{entry['file']}.tmp"
            cf = cache_file(name)
            reader = data_reader(feeds[name]) if name in need else None
            with _quiet_root_logger():  # ORT logs a "consider pre-processing" warning per graph
                quantize_static(str(src / entry["file"]), str(tmp), reader, quant_format=QuantFormat.QDQ,
                                per_channel=cfg.per_channel, activation_type=act,
                                weight_type=QuantType.QInt8, calibrate_method=method,
                                op_types_to_quantize=list(cfg.quantized_ops()),
                                nodes_to_exclude=cfg.exclude.get(name) or None,
                                calibration_cache_path=None if cf is None else str(cf),
                                extra_options={"ActivationSymmetric": cfg.activations == "s8", "WeightSymmetric": True})
            os.replace(tmp, path)
            entry["precision"] = "int8"
        else:  # with its weights, self-contained until finish_export shares them
            model = load_self_contained(src / entry["file"])
            atomic_write(path, lambda t, m=model: onnx.save(m, t))
        new["stages"][name] = entry
    new["precision"] = "int8"
    new["calibration"] = {"method": cfg.method, "images": int(len(images)), "source_export": str(src),
                          "per_channel": cfg.per_channel, "symmetric": cfg.activations == "s8",
                          "weights": "int8 symmetric per-channel" if cfg.per_channel else "int8 symmetric",
                          "activations": {"s8": "int8 symmetric", "u8": "uint8 asymmetric"}[cfg.activations],
                          "op_types": list(cfg.quantized_ops()), "kept_float": list(cfg.keep_float),
                          "excluded_nodes": {k: list(v) for k, v in cfg.exclude.items() if v},
                          "format": "QDQ", "cache": None if cache is None else str(cache)}
    return finish_export(out, new)
