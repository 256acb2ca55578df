"""The PyTorch stages chained on one device: a whole region edit with the tensors never leaving it.

`TorchChain.full` runs SMPN -> ROI mask (channel select + 8-bit quantisation, as the Editor does on the host) ->
encoder -> decoder prefix -> edit tail -> RB of the ROI for one image (batch 1, full image, region noise), and
keeps the codes and masks on the device; `TorchChain.reedit` runs ROI mask -> edit tail -> RB on them for a new
seed or strength. Host copies only at the ends: the image, noise and strength in, the edited image and mask out.
On CUDA each chain is captured once per (kind, ROI, SMPN graph) into a CUDA graph and replayed with one launch;
inputs are copied into the graph's static buffers first, and the held codes live in buffers owned by the chain,
so every re-edit graph reads what the last full edit wrote. This is the same contract as
`TensorRTBackend.run_chain` / `run_reedit`, so the Editor hands single region edits to either.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch

from ssae import philox
from ssae.kernels.ops import use_fused_op
from .backend import BackendError

FULL, REEDIT = "full", "reedit"


class TorchChain:
    """Device-resident chain over the stage modules of one model (see the module docstring)."""

    def __init__(self, stages: dict[str, torch.nn.Module], facts: dict, device: torch.device,
                 dtype: torch.dtype = torch.float32, autocast_dtype: torch.dtype | None = None,
                 fused_kernel: bool = False, cuda_graphs: bool | None = None):
        """stages: `export.stages.build_stages` modules already on `device` in `dtype` (float32 or float16);
        facts: `export.stages.model_facts`. autocast_dtype: run under torch.autocast in this dtype (None: the
        modules' own dtype). cuda_graphs: capture the chains (default: on CUDA devices)."""
        self.stages, self.device = stages, device
        self.rois: tuple[str, ...] = tuple(facts["rois"])
        self.size = int(facts["model_config"]["image_size"])
        self.code_ch = int(facts["model_config"]["sae"]["global_code_ch"])
        self.autocast_dtype, self.fused_kernel = autocast_dtype, fused_kernel
        self.cuda_graphs = device.type == "cuda" if cuda_graphs is None else bool(cuda_graphs and device.type == "cuda")
        s = self.size
        self.dtype = dtype
        zeros = lambda *shape: torch.zeros(*shape, device=device, dtype=dtype)  # noqa: E731
        # inputs (copied in before every run) and the state one full edit leaves for the re-edits
        self._image, self._noise, self._strength = zeros(1, 3, s, s), zeros(1, self.code_ch), zeros(1)
        self._xi = None
        if facts.get("local_tail"):
            self._xi = torch.from_numpy(philox.tail_noise_map(facts)).to(device, dtype)
        self._held: dict[str, torch.Tensor] | None = None  # h, skip, texture, masks: allocated on the first full edit
        self._held_rois: tuple[str, ...] = ()
        self._graphs: dict[tuple[str, str, str], tuple[Callable[[], None], dict[str, torch.Tensor]]] = {}
        self.graph_errors: dict[tuple[str, str, str], str] = {}
        # One memory pool for all captured chains: they run one at a time on one stream, and each run's outputs are
        # copied to the host before any other chain runs, so their intermediates may share memory (one chain's
        # worth of activations instead of one per ROI and kind). Inputs and held codes live outside the pool.
        self._pool = None

    # ---------------------------------------------------------------------------------------------- public
    def full(self, image: np.ndarray, roi: str, seed: int, strength: float, single_roi: bool = False) -> dict:
        """Full edit of one (1, 3, S, S) float32 image in [-1, 1]: {"refined": (1, 3, S, S), "mask": (1, 1, S, S)}."""
        smpn = f"smpn_{roi}" if single_roi and f"smpn_{roi}" in self.stages else "smpn"
        img = np.asarray(image, np.float32)
        if img.shape != (1, 3, self.size, self.size):
            raise ValueError(f"image must be (1, 3, {self.size}, {self.size}) float32 in [-1, 1], got {img.shape}")
        self._check_roi(roi)
        self._set_inputs(seed, strength)
        self._image.copy_(torch.from_numpy(img))
        out = self._execute(FULL, roi, smpn)
        self._held_rois = (roi,) if smpn != "smpn" else self.rois
        return out

    def reedit(self, roi: str, seed: int, strength: float) -> dict:
        """A new edit of the image of the last `full` (its codes and masks are still on the device)."""
        self._check_roi(roi)
        if self._held is None or not self._held_rois:
            raise BackendError("no image on the device: run a full edit first")
        if roi not in self._held_rois:
            raise BackendError(f"the device holds only the {', '.join(self._held_rois)} mask: run a full edit "
                               f"with single_roi=False to re-edit other ROIs")
        self._set_inputs(seed, strength)
        return self._execute(REEDIT, roi, f"held{len(self._held_rois)}")

    def info(self) -> dict[str, str]:
        """How each chain ran so far: "cuda graph", or "eager" with the reason."""
        out = {f"{k}/{r}/{s}": "cuda graph" for (k, r, s) in self._graphs}
        out.update({f"{k}/{r}/{s}": f"eager: {why}" for (k, r, s), why in self.graph_errors.items()})
        return out

    # ---------------------------------------------------------------------------------------------- internals
    def _check_roi(self, roi: str) -> None:
        if roi not in self.rois:
            raise ValueError(f"unknown ROI {roi!r} (choose from {', '.join(self.rois)})")

    def _set_inputs(self, seed: int, strength: float) -> None:
        if not np.isfinite(strength):
            raise ValueError(f"strength must be a finite number, got {strength}")
        noise = philox.region_noise([seed], self.code_ch)
        self._noise.copy_(torch.from_numpy(noise))
        self._strength.fill_(float(strength))

    def _context(self):
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(use_fused_op(self.fused_kernel))
        if self.autocast_dtype is not None:  # no weight-cast cache: it would not survive graph capture
            stack.enter_context(torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=False))
        return stack

    def _forward(self, kind: str, roi: str, smpn: str) -> dict[str, torch.Tensor]:
        """One chain on the current inputs; a full edit also writes the held state (`smpn` names its SMPN graph;
        for a re-edit it only tells the captured graphs apart)."""
        st = self.stages
        if kind == FULL:
            masks = (torch.round(st[smpn](self._image).float() * 255.0) / 255.0).to(self.dtype)
            structure, texture = st["sae_encoder"](self._image)
            h, skip = st["sae_decoder_prefix"](structure, texture)
            self._hold(h, skip, texture, masks)
        held = self._held
        mask = held["masks"][:, self.rois.index(roi): self.rois.index(roi) + 1] \
            if held["masks"].shape[1] > 1 else held["masks"]
        xi = () if self._xi is None else (self._xi,)
        coarse = st["sae_decoder_edit"](held["h"], held["skip"], held["texture"], mask, self._noise,
                                        self._strength, *xi)
        refined = st[f"refine_{roi}"](coarse, mask)
        return {"refined": refined, "mask": mask}

    def _hold(self, h, skip, texture, masks) -> None:
        shapes = dict(h=h, skip=skip, texture=texture, masks=masks)
        if self._held is None or any(self._held[k].shape != v.shape or self._held[k].dtype != v.dtype
                                     for k, v in shapes.items()):
            self._held = {k: torch.empty_like(v) for k, v in shapes.items()}
            self._graphs.clear()  # they were captured on the old buffers
        for k, v in shapes.items():
            self._held[k].copy_(v)

    def _execute(self, kind: str, roi: str, smpn: str) -> dict[str, np.ndarray]:
        key = (kind, roi, smpn)
        with self._context():
            if not self.cuda_graphs or key in self.graph_errors:
                out = self._forward(kind, roi, smpn)
            else:
                if key not in self._graphs:
                    self._capture(key)
                if key in self._graphs:
                    replay, out = self._graphs[key]
                    replay()
                else:
                    out = self._forward(kind, roi, smpn)
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    def _capture(self, key: tuple[str, str, str]) -> None:
        """Capture one chain into a CUDA graph (after warm-up runs on a side stream, which also allocate the held
        buffers); a failure is recorded and that chain stays eager."""
        kind, roi, smpn = key
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._forward(kind, roi, smpn)
            torch.cuda.current_stream(self.device).wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out = self._forward(kind, roi, smpn)
            self._graphs[key] = (graph.replay, out)
        except RuntimeError as e:
            self.graph_errors[key] = str(e).splitlines()[0][:200]
