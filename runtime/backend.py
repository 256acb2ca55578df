"""The `Backend` interface: load a model's stages, run one stage on named tensors, report device and precision.

Every backend runs the same stages with the same names and I/O (`ssae.export.stages`); the `Editor` chains them
and never knows which backend it talks to. Tensors cross the interface as float32 numpy arrays.
"""
from __future__ import annotations

import abc

import numpy as np


class BackendError(RuntimeError):
    """A backend cannot be used here (not installed, wrong device, incompatible files): one-line reason."""


class Backend(abc.ABC):
    """One way of executing the pipeline stages."""

    #: Registry name, e.g. "torch", "torch-bf16", "onnxruntime", "openvino", "tensorrt".
    name: str = ""

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
