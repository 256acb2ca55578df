"""Model sources and backend selection.

A model is given as None (the bundled model), a preset name (random weights, for benchmarks), a checkpoint
(file or folder of `.safetensors`) or an ONNX export folder (`manifest.json`). ONNX backends given a checkpoint
export it once into a cache folder keyed by the weights' hash (`$SSAE_CACHE/exports/<key>`).

`auto` picks, in order: TensorRT (CUDA GPU with TensorRT), torch on CUDA, OpenVINO bf16 (installed, CPU with
AMX), torch bf16 channels-last (CPU with AMX), ONNX Runtime fp32. The order follows the measured speeds in
`benchmarks/bench_runtime.py` (README); bf16 paths are within 40 dB PSNR of fp32 (tests/test_runtime.py).
"""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ssae.errors import SSAEError
from ssae.config import PRESETS
from ssae.fileio import default_cache_dir
from .backend import Backend, BackendError

#: The torch backends and their precision.
TORCH_PRECISIONS = {"torch": "fp32", "torch-bf16": "bf16", "torch-fp16": "fp16"}
BACKENDS = (*TORCH_PRECISIONS, "onnxruntime", "openvino", "openvino-fp32", "tensorrt")
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
        from ssae.export.onnx_export import export_onnx
        if not quiet:
            print(f"ssae: exporting ONNX graphs once into {d} ...", file=sys.stderr)
        export_onnx(load_torch_model(src), d, upsample=upsample)
    return d


def auto_backend() -> str:
    import torch

    from ssae.info import cpu_flags
    if torch.cuda.is_available():
        try:
            import tensorrt  # noqa: F401
            return "tensorrt"
        except ImportError:
            return "torch"
    try:
        import openvino  # noqa: F401
        has_ov = True
    except ImportError:
        has_ov = False
    amx = "amx_bf16" in cpu_flags()
    if has_ov and amx:
        return "openvino"
    if amx:
        return "torch-bf16"
    return "onnxruntime"


def create_backend(name: str, src: ModelSource, device: str | None = None) -> Backend:
    """Instantiate a backend by name for a model source."""
    import torch

    if name == "auto":
        name = auto_backend()
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r} (choose from auto, {', '.join(BACKENDS)})")
    if name in TORCH_PRECISIONS:
        from .torch_backend import TorchBackend
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if name == "torch-fp16" and not dev.startswith("cuda"):
            raise BackendError("torch-fp16 runs on a CUDA device (no CUDA device here: use torch or torch-bf16)")
        return TorchBackend(load_torch_model(src), dev, TORCH_PRECISIONS[name])
    if name == "onnxruntime":
        from .onnx_backends import OrtBackend
        return OrtBackend(export_dir_for(src))
    if name in ("openvino", "openvino-fp32"):
        from .onnx_backends import OpenVINOBackend
        return OpenVINOBackend(export_dir_for(src), precision="auto" if name == "openvino" else "fp32")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        raise BackendError("TensorRT is not installed (pip install 'ssae[gpu]' on a CUDA machine)") from None
    from .tensorrt_backend import TensorRTBackend
    return TensorRTBackend(export_dir_for(src))
