"""One replica's model: an Editor with the shared encode cache, and the batched pass over concurrent requests.

`Engine.edit_batch(jobs)` is what Serve's dynamic batching (`@serve.batch`) calls with the requests that arrived
together. A batch of one goes through `Editor.edit` (re-edits of a cached image then take the Editor's cheap
window path). A larger batch is one pass: every image is encoded once (SMPN, encoder and decoder prefix, or
nothing when the encode cache has it), then the edit tail of all requests runs as one batched call per noise mode
and the refinement blocks as one batched call per ROI; re-edits of images edited before run per ROI on the window
around the union of their masks (as the Editor's re-edits do), first edits on the full image. Requests may mix images,
ROIs, seeds, strengths and `preserve_background`. The result of each request is the same as `Editor.edit` gives
(tests/test_serve.py checks this within one 8-bit level).

The batched pass chains the Editor's stage helpers (`_encode`, `_stage_inputs`, `_run`, `_refine`), the same
ones `Editor.edit_many` chains for the pairs of one image; it does not change the Editor.

The Editor is not thread-safe: every call into it holds `Engine.lock`.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from ..runtime.editor import Editor, composite
from .api import EditJob
from .cache import EncodeCache, attach


@dataclass
class EditOutcome:
    """The result of one edit request."""

    image: Image.Image
    timings: dict[str, float]
    batch_size: int


@dataclass(frozen=True)
class EngineConfig:
    """How a replica loads its model."""

    model: str | None = None          # None: the bundled model; a checkpoint, an export folder or a preset
    backend: str = "auto"
    threads: int = 0                  # intra-op threads (onnxruntime, torch); 0: the backend's default
    cache_mb: float = 512.0           # encode cache bound


def load_editor(cfg: EngineConfig) -> Editor:
    """The Editor of a replica (ONNX Runtime and torch honour `threads`)."""
    from ..runtime.editor import _manifest_of
    from ..runtime.registry import create_backend, export_dir_for, resolve_model

    src = resolve_model(cfg.model)
    if cfg.backend == "onnxruntime" and cfg.threads:
        from ..runtime.onnx_backends import OrtBackend
        be = OrtBackend(export_dir_for(src), threads=cfg.threads)
    else:
        if cfg.threads and cfg.backend in ("torch", "torch-bf16"):
            import torch
            torch.set_num_threads(cfg.threads)
        be = create_backend(cfg.backend, src)
    return Editor(be, _manifest_of(be))


def prepare_model(model: str | None, backend: str) -> str | None:
    """For ONNX backends, export a checkpoint once here (workers then share the export folder instead of each
    exporting it); the model argument unchanged otherwise."""
    from ..runtime.registry import auto_backend, export_dir_for, resolve_model
    name = auto_backend() if backend == "auto" else backend
    if name in ("torch", "torch-bf16"):
        return model
    return str(export_dir_for(resolve_model(model)))


class Engine:
    """An Editor, its encode cache (bounded by bytes) and a lock."""

    def __init__(self, editor: Editor, cache_mb: float = 512.0, model_label: str | None = None):
        self.editor = editor
        self.cache = attach(editor, EncodeCache(int(cache_mb * (1 << 20))))
        self.lock = threading.Lock()
        self.model_label = model_label or "bundled"
        self.requests = 0
        self.batches = 0
        self.started = time.time()

    @classmethod
    def load(cls, cfg: EngineConfig) -> "Engine":
        return cls(load_editor(cfg), cfg.cache_mb, str(cfg.model) if cfg.model is not None else "bundled")

    @property
    def rois(self) -> tuple[str, ...]:
        return self.editor.rois

    # ------------------------------------------------------------------------------------------ requests
    def masks(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        with self.lock:
            try:
                return self.editor.masks(rgb)
            finally:
                self.cache.trim()

    def edit_batch(self, jobs: Sequence[EditJob]) -> list[EditOutcome | BaseException]:
        """One result per job, in order: an EditOutcome or the exception that job raised (one bad request does
        not fail the others)."""
        if not jobs:
            return []
        with self.lock:
            self.requests += len(jobs)
            self.batches += 1
            try:
                if len(jobs) == 1:
                    return [self._edit_one(jobs[0])]
                return self._edit_many(list(jobs))
            finally:
                self.cache.trim()

    def _edit_one(self, job: EditJob) -> EditOutcome | BaseException:
        p = job.params
        try:
            r = self.editor.edit(job.rgb, roi=p.roi, seed=p.seed, strength=p.strength, noise=p.noise,
                                 preserve_background=p.preserve_background)
        except Exception as e:  # noqa: BLE001 - returned to that request's caller
            return e
        return EditOutcome(r.image, r.timings, 1)

    def _edit_many(self, jobs: list[EditJob]) -> list[EditOutcome | BaseException]:
        ed = self.editor
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        results: list[EditOutcome | BaseException | None] = [None] * len(jobs)
        encs = []
        for k, job in enumerate(jobs):  # encode (or find in the cache) each image once
            try:
                ed._roi_index(job.params.roi)
                encs.append(ed._encode(job.rgb, timings, rois=[job.params.roi]))
            except Exception as e:  # noqa: BLE001
                results[k] = e
                encs.append(None)
        # one batched call per noise mode for first edits (full image); re-edits per noise mode and ROI, so that
        # each group's window stays around one region (lips of many faces: small; lips with hair: the whole image)
        groups: dict[tuple[str, bool, str], list[int]] = {}
        for k, j in enumerate(jobs):
            if results[k] is None:
                again = encs[k].edits > 0
                groups.setdefault((j.params.noise, again, j.params.roi if again else ""), []).append(k)
        for (noise, again, _roi), idx in groups.items():
            try:
                refined, masks = self._tail(idx, jobs, encs, noise, again, timings)
            except Exception as e:  # noqa: BLE001 - the whole group failed (e.g. a model without pixel noise)
                for k in idx:
                    results[k] = e
                continue
            total = (time.perf_counter() - t0) * 1e3
            for n, k in enumerate(idx):
                enc, p = encs[k], jobs[k].params
                img = np.round((np.clip(refined[n], -1, 1) + 1) * 127.5).astype(np.uint8).transpose(1, 2, 0)
                img = enc.fit.restore_rgb(img)
                if p.preserve_background:
                    img = composite(img, enc.rgb, enc.fit.restore_mask(masks[n, 0]))
                tm = dict(timings)
                tm["total"] = total
                results[k] = EditOutcome(Image.fromarray(img), tm, len(jobs))
        for enc in {id(e): e for e in encs if e is not None}.values():
            enc.edits += 1
        return results  # type: ignore[return-value]

    def _tail(self, idx: list[int], jobs: list[EditJob], encs: list, noise: str, again: bool, timings: dict):
        """Edit tail of the jobs `idx` (one noise mode) as one batched call, then the RBs batched per ROI.

        Re-edits (`again`: every image was edited before) run on the window around the union of their masks and
        are pasted into each image's cached unedited result, as `Editor` does for the pairs of one image (exact:
        a larger window only computes more); first edits run on the full image."""
        ed = self.editor
        masks = np.concatenate([encs[k].masks[jobs[k].params.roi] for k in idx])
        window = ed._window(masks) if (again and ed.crop) else None
        comp = window[1] if window is not None else None
        feeds = [ed._stage_inputs(encs[k], 1, masks[n: n + 1], [jobs[k].params.seed], jobs[k].params.strength,
                                  noise, comp) for n, k in enumerate(idx)]
        batched = {name: (feeds[0][name] if name == "xi" else np.concatenate([f[name] for f in feeds]))
                   for name in feeds[0]}
        stage = "sae_decoder_edit" if noise == "region" else "sae_decoder_edit_pixel"
        coarse = ed._run(stage, timings, **batched)["image"]
        pairs = [(jobs[k].params.roi, ed._roi_index(jobs[k].params.roi), jobs[k].params.seed) for k in idx]
        part = ed._refine(pairs, coarse, batched["mask"], timings)
        if window is None:
            return part, masks
        (oy0, oy1, ox0, ox1), (cy0, cy1, cx0, cx1) = window
        out = np.concatenate([ed._base_refined(encs[k], jobs[k].params.roi, masks[n: n + 1], timings)
                              for n, k in enumerate(idx)])
        out[..., oy0:oy1, ox0:ox1] = part[..., oy0 - cy0: oy1 - cy0, ox0 - cx0: ox1 - cx0]
        return out, masks

    # ------------------------------------------------------------------------------------------ health
    def health(self) -> dict:
        return {"model": self.model_label, "backend": self.editor.backend.describe(), "rois": list(self.rois),
                "image_size": self.editor.size, "cache": self.cache.stats().to_dict(),
                "requests": self.requests, "batches": self.batches, "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started, 1)}
