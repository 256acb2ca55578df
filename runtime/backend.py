"""The `Backend` interface: load a model's stages, run one stage on named tensors, report device and precision.

Every backend runs the same stages with the same names and I/O (`ssae.export.stages`); the `Editor` chains them
and never knows which backend it talks to. Tensors cross the interface as numpy arrays: float32, except the integer
index tensors of the sparse edit graph (int64; the manifest's dtype says which).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from ssae.errors import SSAEError
from ssae.face import FaceCrop


class BackendError(SSAEError, RuntimeError):
    """A backend cannot be used here (not installed, wrong device, incompatible files): one-line reason."""


#: Manifest dtype -> the numpy dtype a backend feeds; anything else (float32, unset) is fed as float32.
_FED_AS = {"float16": np.float16, "int64": np.int64}


def input_dtype(spec_dtype: str | None):
    """The numpy dtype of an input whose manifest dtype is `spec_dtype`: int64 index inputs stay int64, float16
    graphs take float16, every other input float32."""
    return _FED_AS.get(spec_dtype, np.float32)


@dataclass
class PhotoPatch:
    """One face of a photo edited by a device chain (`DeviceChain.edit_photo`): `patch` (uint8 (y1 - y0, x1 - x0,
    3)) replaces the photo's pixels in `box` (x0, y0, x1, y1); both None when the region is empty. `mask`: the
    crop's region mask (1, 1, S, S); `kind`: "full" or "reedit", what the chain ran."""

    box: tuple[int, int, int, int] | None
    patch: np.ndarray | None
    mask: np.ndarray
    kind: str


class DeviceChain(abc.ABC):
    """A single region edit run whole on the backend's device (batch 1, full crop, region noise): the codes and
    masks of the last `full` edit stay there, so a new seed or strength replays only mask -> edit tail -> RB.
    Both walk `ssae.pipeline.chain_stages`; the Editor hands single region edits to a backend's chain."""

    @abc.abstractmethod
    def full(self, image: np.ndarray, roi: str, seed: int, strength: float, single_roi: bool = False) -> dict:
        """Edit one (1, 3, S, S) float32 image in [-1, 1]: {"refined": (1, 3, S, S), "mask": (1, 1, S, S)}.
        single_roi: predict only this ROI's mask (then only this ROI can be re-edited)."""

    @abc.abstractmethod
    def reedit(self, roi: str, seed: int, strength: float) -> dict:
        """A new edit of the image of the last `full` (same outputs); BackendError when the device does not hold
        it (another call reused the buffers) or holds only another ROI's mask."""

    def edit_photo(self, photo: np.ndarray, key: str, crop: FaceCrop, roi: str, seed: int, strength: float,
                   feather: float) -> PhotoPatch | None:
        """A region edit of one face of a photo with its framing and compositing on the device too: the crop cut
        from `photo` (uint8 (H, W, 3)), a full edit, or a re-edit when the chain already holds `key` (the photo
        and crop), and the edit's change (refined edit minus the refined edit at strength 0) pasted under the
        mask feathered by `feather` crop pixels, as `FaceCrop.paste_change` does on the host. None: this chain
        frames on the host (the Editor cuts, calls `full` / `reedit` and pastes)."""
        return None

    def info(self) -> dict[str, str]:
        """How each chain ran so far (e.g. "cuda graph", or "eager: <why>")."""
        return {}


class Backend(abc.ABC):
    """One way of executing the pipeline stages (`ssae.pipeline`) of one model.

    Every backend declares what the Editor needs: the model's facts (`manifest`), its stages, how to run one, and
    optionally a device chain. `Editor(backend)` is all a caller writes."""

    #: Registry name shown in reports, e.g. "torch", "torch-bf16", "onnxruntime", "openvino", "tensorrt".
    name: str = ""
    #: Whether the Editor should run single region re-edits with the sparse tile graph when the backend has it
    #: (`sae_decoder_edit_sparse`: faster than the window on CPUs, benchmarks/bench_runtime.py).
    sparse_reedit: bool = False

    @property
    @abc.abstractmethod
    def manifest(self) -> dict:
        """The model's facts (`ssae.export.stages.model_facts`, or an export's manifest.json): "model_config",
        "rois", "local_tail", "rb_radius", "sparse_tile", "pixel_noise_shape", "injection_index"."""

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

    def device_chain(self) -> DeviceChain | None:
        """The backend's device chain, or None when single region edits run stage by stage on the host."""
        return None

    def warmup(self) -> None:
        """Load or compile every stage now instead of on first use (servers call it before taking traffic)."""

    def synchronize(self) -> None:
        """Wait for queued device work (for timing); a no-op on synchronous backends."""

    def close(self) -> None:
        """Release what the backend loaded (sessions, engines, device memory) now. Idempotent."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> str:
        return f"{self.name} ({self.precision} on {self.device})"

    def _check_stage(self, stage: str) -> None:
        if stage not in self.stages():
            raise BackendError(f"backend {self.name} has no stage {stage!r}")
