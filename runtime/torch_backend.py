"""PyTorch eager backend: fp32, bfloat16 + channels-last (fast on CPUs with AMX), or float16 weights and activations
(for CUDA devices: the tensor-core path of the fused kernel), on CPU or CUDA."""
from __future__ import annotations

import numpy as np
import torch

from ssae.export.stages import CPU_ONLY_STAGES, build_stages, model_facts
from ssae.kernels.ops import use_fused_op
from ssae.models.ssae_model import SSAE
from .backend import Backend, BackendError, input_dtype
from .torch_chain import ChainLevers, TorchChain


class TorchBackend(Backend):
    #: Run the region edit's injection layer through the fused CUDA kernel (`torch.ops.ssae.masked_modconv`): on
    #: CUDA devices (on the CPU the op would run the same reference). Where the kernel cannot load, the op falls
    #: back to the reference with a one-time warning. Benchmarks turn it off to time the unfused formulation.
    fused_kernel: bool
    #: Replay the device chain from captured CUDA graphs (benchmarks turn it off to time eager chains).
    cuda_graphs: bool = True
    #: How the device chain's stages execute (memory format, torch.compile); set before the first edit.
    chain_levers: ChainLevers = ChainLevers()

    def __init__(self, model: SSAE, device: str = "cpu", precision: str = "fp32"):
        """precision: fp32; bf16 (autocast, channels-last: fast on AMX CPUs); fp16 (half weights and activations,
        meant for CUDA devices, where the fused kernel takes its tensor-core entry). On CUDA devices single region
        edits run as one device chain (`device_chain`, `runtime/torch_chain.py`); on the CPU the Editor's stage
        path is faster (its re-edits compute only the ROI's window or sparse tiles)."""
        if precision not in ("fp32", "bf16", "fp16"):
            raise BackendError(f"torch backend precision must be fp32, bf16 or fp16, not {precision!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("torch backend: CUDA requested but no CUDA device is available")
        self.name = "torch" if precision == "fp32" else f"torch-{precision}"
        self._device = torch.device(device)
        # single region re-edits on the sparse tiles on CPUs (faster than the window for large sparse masks such as
        # hair: benchmarks/bench_runtime.py); that graph runs in fp32 under bf16
        # autocast (bf16 would round the Winograd-transformed tiles), and not at all in fp16 (its weights are half).
        # On CUDA the fused kernel runs the window.
        self.sparse_reedit = self._device.type == "cpu" and precision != "fp16"
        self._precision = precision
        self.fused_kernel = self._device.type == "cuda"
        self._chain = None
        self._facts = None
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

    @property
    def manifest(self) -> dict:
        if self._facts is None:
            self._facts = model_facts(self.model)
        return self._facts

    # ---------------------------------------------------------------------------------------------- chained edits
    def device_chain(self) -> TorchChain | None:
        """The device chain on CUDA devices (None on the CPU, where the Editor's stage path is faster)."""
        return self.chain() if self._device.type == "cuda" else None

    def chain(self) -> TorchChain:
        """This backend's `TorchChain`, on any device (the CPU one serves tests of the chaining contract)."""
        if self._chain is None:
            if self.chain_levers.channels_last and self._precision != "bf16":  # bf16 modules are channels-last already
                _to_channels_last(self._stages.values())
            self._chain = TorchChain(self._stages, self._specs(), self.manifest, self._device, self._dtype,
                                     torch.bfloat16 if self._precision == "bf16" else None, self.fused_kernel,
                                     self.cuda_graphs, self.chain_levers)
        return self._chain

    def synchronize(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)


def _to_channels_last(modules) -> None:
    """Modules, and the folded kernels their frozen layers cache as plain attributes, in channels-last memory
    format (the same values: a layout change only)."""
    for module in modules:
        module.to(memory_format=torch.channels_last)
        for m in module.modules():
            for name in ("w_fold", "w_gain"):
                t = getattr(m, name, None)
                if isinstance(t, torch.Tensor) and t.dim() == 4:
                    setattr(m, name, t.contiguous(memory_format=torch.channels_last))
