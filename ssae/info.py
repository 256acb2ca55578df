"""What this machine offers: library versions, backends, accelerators, CPU instruction sets."""
from __future__ import annotations

import importlib
import platform
from dataclasses import dataclass, field


def _version(mod: str) -> str | None:
    try:
        m = importlib.import_module(mod)
    except Exception:  # noqa: BLE001 - an optional library may fail to import in many ways
        return None
    return getattr(m, "__version__", "unknown")


def cpu_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (empty where unavailable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class MachineInfo:
    versions: dict[str, str | None] = field(default_factory=dict)
    ort_providers: list[str] = field(default_factory=list)
    cuda_devices: list[str] = field(default_factory=list)
    tensorrt: str | None = None
    fused_kernel: str = ""  # "available", or why the fused CUDA kernel cannot run here
    cpu: str = ""
    isa: dict[str, bool] = field(default_factory=dict)

    @property
    def has_amx(self) -> bool:
        return self.isa.get("amx_bf16", False)


def gather() -> MachineInfo:
    info = MachineInfo()
    for mod in ("ssae", "torch", "numpy", "PIL", "onnx", "onnxruntime", "safetensors", "openvino", "tensorrt",
                "cuda.bindings"):
        info.versions[mod] = _version(mod)
    try:
        import onnxruntime as ort
        info.ort_providers = list(ort.get_available_providers())
    except Exception:  # noqa: BLE001
        pass
    try:
        import torch
        if torch.cuda.is_available():
            info.cuda_devices = [f"{torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})"
                                 for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001
        pass
    info.tensorrt = info.versions.get("tensorrt")
    flags = cpu_flags()
    info.cpu = cpu_model()
    info.isa = {name: name in flags for name in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
                                                 "amx_bf16", "amx_int8")}
    return info


def format_info(info: MachineInfo) -> str:
    lines = ["versions:"]
    for k, v in info.versions.items():
        lines.append(f"  {k:<14} {v or 'not installed'}")
    lines.append(f"onnxruntime providers: {', '.join(info.ort_providers) or 'none'}")
    lines.append(f"tensorrt: {info.tensorrt or 'not installed'}")
    lines.append(f"CUDA devices: {', '.join(info.cuda_devices) or 'none'}")
    lines.append(f"fused CUDA kernel: {info.fused_kernel or 'unknown'}")
    lines.append(f"CPU: {info.cpu}")
    lines.append("instruction sets: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in info.isa.items()))
    return "\n".join(lines)
