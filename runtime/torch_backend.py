"""PyTorch eager backend: fp32, bfloat16 + channels-last (fast on CPUs with AMX), or float16 weights and activations
(for CUDA devices: the tensor-core path of the fused kernel), on CPU or CUDA."""
from __future__ import annotations

import numpy as np
import torch

from ssae.export.stages import CPU_ONLY_STAGES, build_stages
from ssae.kernels.ops import use_fused_op
from ssae.models.ssae_model import SSAE
from .backend import Backend, BackendError, input_dtype


class TorchBackend(Backend):
    def __init__(self, model: SSAE, device: str = "cpu", precision: str = "fp32", fused_kernel: bool | None = None,
                 device_chain: bool | None = None, cuda_graphs: bool = True):
        """precision: fp32; bf16 (autocast, channels-last: fast on AMX CPUs); fp16 (half weights and activations,
        meant for CUDA devices, where the fused kernel takes its tensor-core entry).
        fused_kernel: run the region edit's injection layer through the fused CUDA kernel
        (`torch.ops.ssae.masked_modconv`; default: on CUDA devices, off on the CPU, where the op would run the same
        reference). Where the kernel cannot load, the op falls back to the reference with a one-time warning.
        device_chain: run single region edits as one chain on the device (`run_chain` / `run_reedit`, see
        `runtime/torch_chain.py`; the Editor hands them over); default: on CUDA devices. On the CPU the Editor's
        stage path is faster (its re-edits compute only the ROI's window or sparse tiles). cuda_graphs: replay
        those chains from captured CUDA graphs."""
        if precision not in ("fp32", "bf16", "fp16"):
            raise BackendError(f"torch backend precision must be fp32, bf16 or fp16, not {precision!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("torch backend: CUDA requested but no CUDA device is available")
        self.name = "torch" if precision == "fp32" else f"torch-{precision}"
        self._device = torch.device(device)
        # single region re-edits on the sparse tiles on CPUs (benchmarks/results/runtime_cpu.json, paper256 hair
        # re-edit: 46 vs 101 ms (fp32), 38 vs 103 ms (bf16) on the window); that graph runs in fp32 under bf16
        # autocast (bf16 would round the Winograd-transformed tiles), and not at all in fp16 (its weights are half).
        # On CUDA the fused kernel runs the window.
        self.sparse_reedit = self._device.type == "cpu" and precision != "fp16"
        self._precision = precision
        self.fused_kernel = self._device.type == "cuda" if fused_kernel is None else bool(fused_kernel)
        self.chains_on_device = self._device.type == "cuda" if device_chain is None else bool(device_chain)
        self._cuda_graphs = cuda_graphs
        self._chain = None
        self._dtype = torch.float16 if precision == "fp16" else torch.float32  # of weights and activations
        self.model = model.eval().freeze().to(self._device, self._dtype)
        self._stages = build_stages(self.model)
        fmt = torch.channels_last if precision == "bf16" else torch.contiguous_format
        for m in self._stages.values():
            m.to(self._device, self._dtype, memory_format=fmt)
        if precision == "bf16":
            self.model.freeze()  # re-fold after the memory-format change (fp16 keeps the fp32 fold, rounded)

    @property
    def device(self) -> str:
        if self._device.type == "cuda":
            return f"{self._device} ({torch.cuda.get_device_name(self._device)})"
        return "cpu"

    @property
    def precision(self) -> str:
        return self._precision

    def stages(self) -> list[str]:
        return list(self._stages)

    def run(self, stage: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_stage(stage)
        spec = self._specs()[stage]
        args = []
        for t in spec.inputs:
            x = torch.from_numpy(np.ascontiguousarray(inputs[t.name], dtype=input_dtype(t.dtype))).to(self._device)
            if x.is_floating_point():
                x = x.to(self._dtype)
            if self._precision == "bf16" and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            args.append(x)
        bf16 = self._precision == "bf16" and stage not in CPU_ONLY_STAGES
        with torch.no_grad(), use_fused_op(self.fused_kernel), \
                torch.autocast(self._device.type, dtype=torch.bfloat16, enabled=bf16):
            out = self._stages[stage](*args)
        out = out if isinstance(out, tuple) else (out,)
        return {t.name: o.float().contiguous().cpu().numpy() for t, o in zip(spec.outputs, out)}

    def _specs(self):
        if not hasattr(self, "_spec_cache"):
            from ssae.export.stages import stage_specs
            self._spec_cache = stage_specs(self.model)
        return self._spec_cache

    # ---------------------------------------------------------------------------------------------- chained edits
    def run_chain(self, image: np.ndarray, roi: str = "hair", seed: int = 0, strength: float = 1.0,
                  single_roi: bool = False) -> dict[str, np.ndarray]:
        """Full edit of one (1, 3, S, S) image on the device: {"refined", "mask"} float32 (`TorchChain.full`)."""
        return self._device_chain().full(image, roi, seed, strength, single_roi)

    def run_reedit(self, roi: str = "hair", seed: int = 0, strength: float = 1.0) -> dict[str, np.ndarray]:
        """A new edit of the image of the last `run_chain` (`TorchChain.reedit`)."""
        return self._device_chain().reedit(roi, seed, strength)

    def chain_info(self) -> dict[str, str]:
        """Which chains ran from CUDA graphs (and why not, where not)."""
        return {} if self._chain is None else self._chain.info()

    def _device_chain(self):
        if self._chain is None:
            from ssae.export.stages import model_facts
            from .torch_chain import TorchChain
            self._chain = TorchChain(self._stages, model_facts(self.model), self._device, self._dtype,
                                     torch.bfloat16 if self._precision == "bf16" else None, self.fused_kernel,
                                     self._cuda_graphs)
        return self._chain

    def synchronize(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
