"""Model sources and the backend registry.

A model is given as None (the bundled model), a preset name (random weights, for benchmarks), a checkpoint
(file or folder of `.safetensors`) or an ONNX export folder (`manifest.json`). ONNX backends given a checkpoint
export it once into a cache folder keyed by the weights' hash (`$SSAE_CACHE/exports/<key>`).

Backends are engines (`ENGINES`: torch, onnxruntime, openvino, tensorrt), each registered with `register` as a
factory and the precisions it runs; `create_backend(engine, model, precision)` builds one, and the CLI's
`--backend` / `--precision` flags take their choices from here. A new backend is one module implementing
`ssae.runtime.backend.Backend` plus one `register` entry below.

`auto` picks, in order: TensorRT (CUDA GPU with TensorRT), torch on CUDA, OpenVINO bf16 (installed, CPU with
AMX), torch bf16 channels-last (CPU with AMX), ONNX Runtime. The order follows the measured speeds
(`benchmarks/bench_runtime.py`); bf16 paths are within 40 dB PSNR of fp32 (tests/test_runtime.py).
"""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ssae.errors import SSAEError
from ssae.config import PRESETS
from ssae.fileio import default_cache_dir
from .backend import Backend, BackendError

#: Bumped whenever the exported graphs change for the same weights (part of the export cache key).
EXPORT_REVISION = 7


class ModelError(SSAEError, ValueError):
    """The model argument names nothing usable (one-line reason)."""


@dataclass
class ModelSource:
    kind: str                   # "checkpoint" | "preset" | "export"
    path: Path | None = None
    preset: str | None = None

    def key(self) -> str:
        """Content hash identifying the weights (for the export cache)."""
        from ssae import __version__
        h = hashlib.sha256(f"ssae-{__version__}|{EXPORT_REVISION}|{self.kind}|{self.preset}".encode())
        if self.path is not None:
            files = sorted(self.path.glob("*.safetensors")) if self.path.is_dir() else [self.path]
            for f in files:
                h.update(f.name.encode())
                with open(f, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
        return h.hexdigest()[:20]


def resolve_model(model: str | os.PathLike | None) -> ModelSource:
    if model is None:
        from ssae.pretrained import bundled_path
        return ModelSource("checkpoint", bundled_path())
    s = str(model)
    if s in PRESETS and not Path(s).exists():
        return ModelSource("preset", preset=s)
    from ssae.pretrained import BUNDLED
    if s in BUNDLED and not Path(s).exists():
        from ssae.pretrained import bundled_path
        return ModelSource("checkpoint", bundled_path(s))
    p = Path(s)
    if not p.exists():
        raise ModelError(f"model not found: {s} (a checkpoint, an export folder, or a preset: {', '.join(PRESETS)})")
    if p.is_dir() and (p / "manifest.json").exists():
        return ModelSource("export", p)
    if (p.is_dir() and any(p.glob("*.safetensors"))) or p.suffix == ".safetensors":
        return ModelSource("checkpoint", p)
    raise ModelError(f"{s} is neither a .safetensors checkpoint nor an ONNX export folder")


def model_rois(src: ModelSource) -> tuple[str, ...]:
    """The ROIs a model edits, read from its files without loading it (no PyTorch): the export manifest, the
    checkpoint's config metadata, or the preset."""
    if src.kind == "preset":
        from ssae.config import preset
        return tuple(preset(src.preset).smpn.rois)
    if src.kind == "export":
        from ssae.export.manifest import read_manifest
        return tuple(read_manifest(src.path, verify=False)["rois"])
    from ssae.checkpoint import CheckpointError, read_config
    try:
        return tuple(read_config(src.path).smpn.rois)
    except CheckpointError as e:
        raise ModelError(str(e)) from None


def load_torch_model(src: ModelSource):
    """The PyTorch SSAE for a checkpoint or preset source."""
    import torch

    from ssae.checkpoint import CheckpointError, load_model
    from ssae.config import preset
    from ssae.models.ssae_model import SSAE

    if src.kind == "export":
        raise BackendError("the torch backend needs checkpoint weights, not an ONNX export folder")
    if src.kind == "preset":
        torch.manual_seed(0)
        return SSAE(preset(src.preset)).eval().freeze()
    try:
        return load_model(src.path)
    except CheckpointError as e:
        raise ModelError(str(e)) from None


def export_dir_for(src: ModelSource, quiet: bool = False, upsample: str = "separate") -> Path:
    """An ONNX export of the source, exporting into the cache on first use. upsample: the decoder's upsampling
    layout (`export_onnx`); an export folder is returned as it is."""
    if src.kind == "export":
        return src.path
    d = default_cache_dir() / "exports" / (src.key() + ("" if upsample == "separate" else f"-{upsample}"))
    if not (d / "manifest.json").exists():
        if not _has("torch"):
            raise BackendError(f"{src.path or src.preset} is a PyTorch checkpoint: exporting it to ONNX needs "
                               f"PyTorch (pip install 'ssae[torch]'), or give an export folder (--model DIR)")
        from ssae.export.onnx_export import export_onnx
        if not quiet:
            print(f"ssae: exporting ONNX graphs once into {d} ...", file=sys.stderr)
        export_onnx(load_torch_model(src), d, upsample=upsample)
    return d


@dataclass(frozen=True)
class EngineEntry:
    """One way of running the pipeline: its precisions (the first is its default) and how to build it."""

    name: str
    precisions: tuple[str, ...]
    summary: str
    factory: Callable[[ModelSource, str, str | None], Backend]   # (model, precision, device) -> Backend
    #: The precision is the export's (its graphs are run as written): "auto" reaches the factory unresolved.
    follows_export: bool = False
    #: The precision "auto" means on this machine (None: the first of `precisions`).
    default: Callable[[], str] | None = None


#: The engines, in registration order (`register`). A new backend is one module plus one entry here.
ENGINES: dict[str, EngineEntry] = {}
PRECISIONS = ("fp32", "bf16", "fp16", "int8")


def register(name: str, precisions: tuple[str, ...], summary: str, follows_export: bool = False,
             default: Callable[[], str] | None = None):
    """Decorator: register `factory(model source, precision, device) -> Backend` as engine `name`."""
    def deco(factory):
        ENGINES[name] = EngineEntry(name, tuple(precisions), summary, factory, follows_export, default)
        return factory
    return deco


def backend_label(engine: str, precision: str) -> str:
    """The name reports and caches use: the engine alone at its default precision ("auto" included), else
    "engine-precision"."""
    return engine if precision in ("auto", ENGINES[engine].precisions[0]) else f"{engine}-{precision}"


def backend_name(backend: str = "auto", precision: str = "auto") -> str:
    """One backend string for the `--backend` and `--precision` flags: "auto" while both are (resolved where the
    backend is created, e.g. on each serving replica), else the label of what they pick (checked now)."""
    if backend == "auto" and precision == "auto":
        return "auto"
    return backend_label(*parse_backend(backend, precision))


def parse_backend(name: str, precision: str = "auto") -> tuple[str, str]:
    """(engine, precision) of a backend name ("auto", an engine, or a label "engine-precision" as reports print
    them) and a precision ("auto": the label's, or the engine's default); `auto` resolves as `auto_backend`."""
    if name == "auto":
        engine, auto_precision = auto_backend()
        return engine, auto_precision if precision == "auto" else precision
    engine, _, label_precision = name.partition("-")
    if engine not in ENGINES:
        raise BackendError(f"unknown backend {name!r} (choose from auto, {', '.join(ENGINES)})")
    if label_precision and precision not in ("auto", label_precision):
        raise BackendError(f"backend {name!r} is {label_precision}: it cannot also be {precision}")
    precision = label_precision or precision
    entry = ENGINES[engine]
    if precision == "auto" and not entry.follows_export:
        precision = entry.default() if entry.default else entry.precisions[0]
    if precision not in ("auto", *entry.precisions):
        raise BackendError(f"{engine} runs {', '.join(entry.precisions)}, not {precision!r}")
    return engine, precision


def _has(module: str) -> bool:
    """Whether `module` can be imported here (without importing it)."""
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or blocked installation counts as absent
        return False


def _cuda_available() -> bool:
    """Whether PyTorch sees a CUDA device (False where PyTorch is not installed: no torch import otherwise)."""
    if not _has("torch"):
        return False
    import torch
    return torch.cuda.is_available()


def _amx() -> bool:
    """Whether the CPU has AMX bf16 (where bf16 inference is fast)."""
    from ssae.info import cpu_flags
    return "amx_bf16" in cpu_flags()


def auto_backend() -> tuple[str, str]:
    """The fastest (engine, precision) here: TensorRT fp16 (CUDA GPU with TensorRT), torch fp16 on CUDA (2.3x the
    fp32 chain on an H100, edits within 3e-3 of fp32: benchmarks/results/runtime_gpu_*.json), OpenVINO bf16
    (installed, CPU with AMX), torch bf16 channels-last (CPU with AMX), ONNX Runtime at the export's precision."""
    if _cuda_available():
        return ("tensorrt", "fp16") if _has("tensorrt") else ("torch", "fp16")
    amx = _amx()
    if amx and _has("openvino"):
        return "openvino", "bf16"
    if amx and _has("torch"):
        return "torch", "bf16"
    return "onnxruntime", "auto"


def create_backend(backend: str = "auto", model: ModelSource | str | os.PathLike | None = None,
                   precision: str = "auto", device: str | None = None) -> Backend:
    """A backend ("auto", an engine or an "engine-precision" label) at a precision ("auto": the engine's default)
    for a model (a `ModelSource`, or what `resolve_model` takes: None = the bundled model). device: "cpu" or
    "cuda[:N]" for the torch engine (default: CUDA when there is one)."""
    engine, precision = parse_backend(backend, precision)
    src = model if isinstance(model, ModelSource) else resolve_model(model)
    return ENGINES[engine].factory(src, precision, device)


@register("torch", ("fp32", "bf16", "fp16"), "PyTorch eager on CPU or CUDA (bf16: channels-last autocast, fast on "
          "AMX CPUs; fp16: CUDA)")
def _torch(src: ModelSource, precision: str, device: str | None) -> Backend:
    if not _has("torch"):
        raise BackendError("the torch backend needs PyTorch (pip install 'ssae[torch]')")
    from .torch_backend import TorchBackend
    dev = device or ("cuda" if _cuda_available() else "cpu")
    if precision == "fp16" and not dev.startswith("cuda"):
        raise BackendError("torch fp16 runs on a CUDA device (no CUDA device here: use fp32 or bf16)")
    return TorchBackend(load_torch_model(src), dev, precision)


@register("onnxruntime", ("fp32", "fp16", "int8"), "ONNX Runtime on the export's graphs, at their precision "
          "(int8: an export from `ssae calibrate`)", follows_export=True)
def _onnxruntime(src: ModelSource, precision: str, device: str | None) -> Backend:
    from .onnx_backends import OrtBackend
    be = OrtBackend(export_dir_for(src))
    if precision not in ("auto", be.precision):
        raise BackendError(f"this export holds {be.precision} graphs, not {precision} (int8: ssae calibrate)")
    return be


@register("openvino", ("bf16", "fp32"), "OpenVINO on the export's graphs (default: bf16 on AMX CPUs, else fp32)",
          default=lambda: "bf16" if _amx() else "fp32")
def _openvino(src: ModelSource, precision: str, device: str | None) -> Backend:
    from .onnx_backends import OpenVINOBackend
    return OpenVINOBackend(export_dir_for(src), precision=precision)


@register("tensorrt", ("fp16", "fp32", "int8"), "TensorRT engines built from the export (CUDA GPU; int8: an export "
          "from `ssae calibrate`)")
def _tensorrt(src: ModelSource, precision: str, device: str | None) -> Backend:
    if not _has("tensorrt"):
        raise BackendError("TensorRT is not installed (pip install 'ssae[gpu]' on a CUDA machine)")
    from .tensorrt_backend import TensorRTBackend
    return TensorRTBackend(export_dir_for(src), precision=precision)


def available_backends() -> list[tuple[str, str, str | None]]:
    """(label, summary, why not available here or None) of every engine at every precision."""
    rows = []
    for e in ENGINES.values():
        for prec in e.precisions:
            why = None
            if e.name == "tensorrt" and not (_has("tensorrt") and _cuda_available()):
                why = "needs TensorRT and a CUDA GPU"
            elif e.name == "torch" and not _has("torch"):
                why = "needs PyTorch (ssae[torch])"
            elif e.name == "openvino" and not _has("openvino"):
                why = "needs OpenVINO (ssae[openvino])"
            elif (e.name, prec) == ("torch", "fp16") and not _cuda_available():
                why = "needs a CUDA device"
            elif prec in ("int8", "fp16") and e.name == "onnxruntime":
                why = f"needs an {prec} export (ssae export --precision fp16, ssae calibrate)"
            rows.append((backend_label(e.name, prec), e.summary, why))
    return rows
