"""One replica's model: an Editor with the shared encode cache, and the batched pass over concurrent requests.

`Engine.edit_batch(jobs)` is what Serve's dynamic batching (`@serve.batch`) calls with the requests that arrived
together. A batch of one goes through `Editor.edit` (re-edits of a cached image then take the Editor's cheap
window or sparse path). A larger batch is one pass (`Editor.edit_requests`): every image is encoded once (SMPN,
encoder and decoder prefix, or nothing when the encode cache has it), then the edit tail of all requests runs as
one batched call per noise mode and the refinement blocks as one batched call per ROI; re-edits of images edited
before run per ROI on the window around the union of their masks, first edits on the full image. Requests may mix
images, ROIs, seeds, strengths and output modes. The result of each request is the same as `Editor.edit`
gives (tests/test_serve.py checks this within one 8-bit level).

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

from ssae.runtime.editor import Editor, EditRequest
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
    from ssae.runtime.registry import create_backend, export_dir_for, parse_backend, resolve_model

    src = resolve_model(cfg.model)
    engine, _ = parse_backend(cfg.backend)
    if engine == "onnxruntime" and cfg.threads:
        from ssae.runtime.onnx_backends import OrtBackend
        be = OrtBackend(export_dir_for(src), threads=cfg.threads)
    else:
        if cfg.threads and engine == "torch":
            import torch
            torch.set_num_threads(cfg.threads)
        be = create_backend(cfg.backend, src)
    return Editor(be)


def prepare_model(model: str | None, backend: str) -> str | None:
    """For ONNX backends, export a checkpoint once here (workers then share the export folder instead of each
    exporting it); the model argument unchanged otherwise."""
    from ssae.runtime.registry import export_dir_for, parse_backend, resolve_model
    if parse_backend(backend)[0] == "torch":
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
                                 reference=p.reference, output=p.output, frame=p.frame, faces=p.faces)
        except Exception as e:  # noqa: BLE001 - returned to that request's caller
            return e
        return EditOutcome(r.image, r.timings, 1)

    def _edit_many(self, jobs: list[EditJob]) -> list[EditOutcome | BaseException]:
        reqs = [EditRequest(j.rgb, j.params) for j in jobs]
        return [r if isinstance(r, BaseException) else EditOutcome(r.image, r.timings, len(jobs))
                for r in self.editor.edit_requests(reqs)]

    # ------------------------------------------------------------------------------------------ health
    def health(self) -> dict:
        return {"model": self.model_label, "backend": self.editor.backend.describe(), "rois": list(self.rois),
                "image_size": self.editor.size, "cache": self.cache.stats().to_dict(),
                "requests": self.requests, "batches": self.batches, "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started, 1)}
