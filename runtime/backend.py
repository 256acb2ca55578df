"""The `Backend` interface: load a model's stages, run one stage on named tensors, report device and precision.

Every backend runs the same stages with the same names and I/O (`ssae.export.stages`); the `Editor` chains them
and never knows which backend it talks to. Tensors cross the interface as numpy arrays: float32, except the integer
index tensors of the sparse edit graph (int64; the manifest's dtype says which).
"""
from __future__ import annotations

import abc

import numpy as np

from ssae.errors import SSAEError


class BackendError(SSAEError, RuntimeError):
    """A backend cannot be used here (not installed, wrong device, incompatible files): one-line reason."""


#: Manifest dtype -> the numpy dtype a backend feeds; anything else (float32, unset) is fed as float32.
_FED_AS = {"float16": np.float16, "int64": np.int64}


def input_dtype(spec_dtype: str | None):
    """The numpy dtype of an input whose manifest dtype is `spec_dtype`: int64 index inputs stay int64, float16
    graphs take float16, every other input float32."""
    return _FED_AS.get(spec_dtype, np.float32)


class Backend(abc.ABC):
    """One way of executing the pipeline stages."""

    #: Registry name, e.g. "torch", "torch-bf16", "onnxruntime", "openvino", "tensorrt".
    name: str = ""
    #: Whether the Editor should run single region re-edits with the sparse tile graph when the backend has it
    #: (`sae_decoder_edit_sparse`; measured per backend in benchmarks/bench_runtime.py).
    sparse_reedit: bool = False
    #: Whether the backend runs a single region edit as one device-resident chain, `run_chain(image, roi, seed,
    #: strength)` then `run_reedit(roi, seed, strength)` (TensorRT; PyTorch on CUDA): the Editor hands such edits over.
    chains_on_device: bool = False

    @property
    @abc.abstractmethod
    def device(self) -> str:
        """Where the stages run, e.g. "cpu", "cuda:0 (NVIDIA H100)"."""

    @property
    @abc.abstractmethod
    def precision(self) -> str:
        """Compute precision: "fp32", "bf16", "fp16", "int8"."""

    @abc.abstractmethod
    def stages(self) -> list[str]:
        """Names of the stages this backend can run."""

    @abc.abstractmethod
    def run(self, stage: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one stage. Inputs and outputs are float32 arrays keyed by the stage's tensor names."""

    def synchronize(self) -> None:
        """Wait for queued device work (for timing); a no-op on synchronous backends."""

    def describe(self) -> str:
        return f"{self.name} ({self.precision} on {self.device})"

    def _check_stage(self, stage: str) -> None:
        if stage not in self.stages():
            raise BackendError(f"backend {self.name} has no stage {stage!r}")
