"""The PyTorch stages chained on one device: a whole region edit with the tensors never leaving it.

`TorchChain` is the torch backend's `DeviceChain`: it walks `ssae.pipeline.chain_stages` over the stage modules,
each output kept in its slot (`ssae.pipeline.slot`) for the next stage, and keeps the codes and masks of the last
full edit on the device (`ssae.pipeline.HELD`), so a re-edit runs ROI mask -> edit tail -> RB only. Host copies only
at the ends: the image, noise and strength in, the edited image and mask out. On CUDA each chain is captured once
per (kind, ROI, SMPN graph) into a CUDA graph and replayed with one launch; inputs are copied into the graph's
static buffers first, and the held codes live in buffers owned by the chain, so every re-edit graph reads what the
last full edit wrote.

`edit_photo` also frames on the device (`ssae.face.device`): the photo region under the crop is copied in once, the
crop is cut there, and the change is pasted there; only the edited pixels and the crop's mask come back. The
unedited reference of each ROI (the chain at strength 0) stays on the device with the photo.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ssae import philox
from ssae.face import FaceCrop
from ssae.face import device as framing
from ssae.kernels.ops import use_fused_op
from ssae.pipeline import (FULL, HELD, PREFIX, REEDIT, ROI_MASK, SMPN, chain_smpn, chain_stages, check_edit, is_smpn,
                           slot)
from .backend import BackendError, DeviceChain, PhotoPatch


@dataclass(frozen=True)
class ChainLevers:
    """How the chain executes (`benchmarks/bench_runtime_gpu.py` measures each).

    channels_last: NHWC activations and weights (cuDNN's tensor-core layout for float16). compile_mode: wrap each
    stage in `torch.compile` (Inductor) with this mode, e.g. "default" or "max-autotune-no-cudagraphs" (modes that
    capture CUDA graphs themselves need cuda_graphs=False); the first run of each chain compiles it."""

    channels_last: bool = False
    compile_mode: str | None = None
    #: CUDA: the SMPN of a full edit on a second stream, beside the encoder and decoder prefix (at batch 1 neither
    #: fills the GPU); captured as two branches of one CUDA graph.
    concurrent_smpn: bool = False


class TorchChain(DeviceChain):
    """Device-resident chain over the stage modules of one model (see the module docstring)."""

    def __init__(self, stages: dict[str, torch.nn.Module], specs: dict, facts: dict, device: torch.device,
                 dtype: torch.dtype = torch.float32, autocast_dtype: torch.dtype | None = None,
                 fused_kernel: bool = False, cuda_graphs: bool | None = None, levers: ChainLevers | None = None):
        """stages: `export.stages.build_stages` modules already on `device` in `dtype` (float32 or float16), and
        their `stage_specs` (the tensor names of their arguments); facts: `export.stages.model_facts`.
        autocast_dtype: run under torch.autocast in this dtype (None: the modules' own dtype). cuda_graphs: capture
        the chains (default: on CUDA devices). levers: memory format (the modules already in it) and compilation
        (default: neither)."""
        self.levers = levers or ChainLevers()
        self.specs, self.device = specs, device
        fmt = torch.channels_last if self.levers.channels_last else torch.contiguous_format
        self.stages = stages if self.levers.compile_mode is None else {
            k: torch.compile(m, mode=self.levers.compile_mode, dynamic=False) for k, m in stages.items()}
        self.rois: tuple[str, ...] = tuple(facts["rois"])
        self.size = int(facts["model_config"]["image_size"])
        self.code_ch = int(facts["model_config"]["sae"]["global_code_ch"])
        self.autocast_dtype, self.fused_kernel = autocast_dtype, fused_kernel
        self.cuda_graphs = device.type == "cuda" if cuda_graphs is None else bool(cuda_graphs and device.type == "cuda")
        s = self.size
        self.dtype = dtype
        zeros = lambda *shape: torch.zeros(*shape, device=device, dtype=dtype)  # noqa: E731
        # inputs (copied in before every run) and the state one full edit leaves for the re-edits
        self._image, self._noise, self._strength = zeros(1, 3, s, s).contiguous(memory_format=fmt), \
            zeros(1, self.code_ch), zeros(1)
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
        self._side = torch.cuda.Stream(device) if self.levers.concurrent_smpn and device.type == "cuda" else None
        self._photo: framing.DevicePhoto | None = None   # the photo region whose crop the chain holds
        self._bases: dict[str, torch.Tensor] = {}        # ROI -> refined edit at strength 0 of that crop

    # ---------------------------------------------------------------------------------------------- public
    def full(self, image: np.ndarray, roi: str, seed: int, strength: float, single_roi: bool = False) -> dict:
        """Full edit of one (1, 3, S, S) float32 image in [-1, 1]: {"refined": (1, 3, S, S), "mask": (1, 1, S, S)}."""
        smpn = chain_smpn(roi, single_roi, self.stages)
        img = np.asarray(image, np.float32)
        if img.shape != (1, 3, self.size, self.size):
            raise ValueError(f"image must be (1, 3, {self.size}, {self.size}) float32 in [-1, 1], got {img.shape}")
        check_edit(roi, self.rois, strength)
        self._photo = None
        self._image.copy_(torch.from_numpy(img))
        return _to_host(self._full(roi, seed, strength, smpn))

    def reedit(self, roi: str, seed: int, strength: float) -> dict:
        """A new edit of the image of the last `full` (its codes and masks are still on the device)."""
        check_edit(roi, self.rois, strength)
        if self._held is None or not self._held_rois:
            raise BackendError("no image on the device: run a full edit first")
        if roi not in self._held_rois:
            raise BackendError(f"the device holds only the {', '.join(self._held_rois)} mask: run a full edit "
                               f"with single_roi=False to re-edit other ROIs")
        return _to_host(self._reedit(roi, seed, strength))

    def edit_photo(self, photo: np.ndarray, key: str, crop: FaceCrop, roi: str, seed: int, strength: float,
                   feather: float) -> PhotoPatch:
        """See `DeviceChain.edit_photo`: cut, chain and paste on the device. A full edit predicts only this ROI's
        mask (its single-ROI SMPN); an edit of another ROI of the same photo runs a full edit of the crop already
        on the device."""
        check_edit(roi, self.rois, strength)
        with torch.no_grad():
            same = self._photo is not None and self._photo.key == key
            if same and self._held is not None and roi in self._held_rois:
                kind, out = "reedit", self._reedit(roi, seed, strength)
            else:
                if not same:
                    self._photo = framing.DevicePhoto.upload(photo, crop, self.device, key)
                    self._image.copy_(framing.cut(self._photo, crop))
                    self._bases = {}
                kind, out = "full", self._full(roi, seed, strength, chain_smpn(roi, True, self.stages))
            refined, mask = out["refined"].float(), out["mask"].float()
            if roi not in self._bases:
                # the captured chains share one memory pool: this run's outputs are copied before the next one
                refined, mask = refined.clone(), mask.clone()
                self._bases[roi] = self._reedit(roi, 0, 0.0)["refined"].float().clone()
            change = (refined - self._bases[roi])[0] * 127.5
            soft = framing.feather(mask[0, 0], feather)
            mask_host, soft_host = torch.stack([mask[0, 0], soft]).cpu().numpy()
            box = crop.support_box(soft_host)
            patch = None if box is None else framing.paste_change(self._photo, crop, change, soft, box).cpu().numpy()
        return PhotoPatch(box, patch, np.ascontiguousarray(mask_host[None, None]), kind)

    def info(self) -> dict[str, str]:
        """How each chain ran so far: "cuda graph", or "eager" with the reason."""
        out = {f"{k}/{r}/{s}": "cuda graph" for (k, r, s) in self._graphs}
        out.update({f"{k}/{r}/{s}": f"eager: {why}" for (k, r, s), why in self.graph_errors.items()})
        return out

    # ---------------------------------------------------------------------------------------------- internals
    def _full(self, roi: str, seed: int, strength: float, smpn: str) -> dict[str, torch.Tensor]:
        """A full edit of the image in the input buffer (device tensors, the graph's buffers when replayed)."""
        self._set_inputs(seed, strength)
        out = self._execute(FULL, roi, smpn)
        self._held_rois = (roi,) if smpn != SMPN else self.rois
        return out

    def _reedit(self, roi: str, seed: int, strength: float) -> dict[str, torch.Tensor]:
        self._set_inputs(seed, strength)
        return self._execute(REEDIT, roi, f"held{len(self._held_rois)}")

    def _set_inputs(self, seed: int, strength: float) -> None:
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
        """One chain on the current inputs (`chain_stages`); a full edit also writes the held state (`smpn` names its
        SMPN graph; for a re-edit it only tells the captured graphs apart). With `concurrent_smpn` the SMPN and the
        ROI mask run on a second stream, forked from the current one here and joined before the held state is
        written (each fork waits for all earlier work, so memory the other stream used is free again)."""
        t: dict[str, torch.Tensor] = {"image": self._image, "noise": self._noise, "strength": self._strength}
        if self._xi is not None:
            t["xi"] = self._xi
        if kind == REEDIT:
            t.update(self._held)
        side = self._side if kind == FULL else None
        if side is not None:
            main = torch.cuda.current_stream(self.device)
            side.wait_stream(main)
        for stage in chain_stages(roi, smpn, kind):
            on_side = side is not None and (is_smpn(stage) or stage == ROI_MASK)
            with torch.cuda.stream(side) if on_side else contextlib.nullcontext():
                self._run_stage(stage, roi, t)
            if kind == FULL and stage == PREFIX:
                if side is not None:
                    main.wait_stream(side)
                self._hold({k: t[k] for k in HELD})
        return {"refined": t["refined"], "mask": t["mask"]}

    def _run_stage(self, stage: str, roi: str, t: dict[str, torch.Tensor]) -> None:
        """One stage of a chain on the tensors `t` (its outputs written into their slots)."""
        if stage == ROI_MASK:
            masks = t["masks"]
            if masks.shape[1] > 1:
                masks = masks[:, self.rois.index(roi): self.rois.index(roi) + 1]
            t["mask"] = (torch.round(masks.float() * 255.0) / 255.0).to(self.dtype)
            return
        spec = self.specs[stage]
        outs = self.stages[stage](*[t[slot(stage, i.name)] for i in spec.inputs])
        outs = outs if isinstance(outs, tuple) else (outs,)
        t.update({slot(stage, o.name): v for o, v in zip(spec.outputs, outs)})

    def _hold(self, held: dict[str, torch.Tensor]) -> None:
        if self._held is None or any(self._held[k].shape != v.shape or self._held[k].dtype != v.dtype
                                     for k, v in held.items()):
            self._held = {k: torch.empty_like(v) for k, v in held.items()}
            self._graphs.clear()  # they were captured on the old buffers
        for k, v in held.items():
            self._held[k].copy_(v)

    def _execute(self, kind: str, roi: str, smpn: str) -> dict[str, torch.Tensor]:
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
        return out

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


def _to_host(out: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.float().cpu().numpy() for k, v in out.items()}
