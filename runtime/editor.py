"""The Editor: image -> SMPN masks -> encoder -> decoder prefix (cached per image) -> edit tail -> RB -> image.

```python
ed = Editor.load()                       # bundled model, fastest backend here
res = ed.edit("face.jpg", roi="hair", seed=3, strength=1.0)
res.image.save("edited.png")             # PIL image at the input's size; res.mask, res.timings (ms per stage)
```

Images of any size and mode are fitted to the model size (pad to square, resize; `ssae.data.SquareFit`) and the
result is resized back. Noise comes from the seed through the counter-based generator (`ssae.kernels.philox`),
never from a backend's RNG, so the same image, ROI and seed give the same edit on every backend.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image, ImageFilter

from ..data.transforms import SquareFit
from ..kernels import philox, sparse_tail
from ..profiling.nvtx import nvtx_range
from .backend import Backend
from .images import load_image
from .registry import create_backend, resolve_model

NOISE_MODES = ("region", "pixel")


@dataclass
class EditResult:
    """One edit: `image` (PIL, input size), `mask` (float32 in [0,1], input size), `timings` (ms per stage)."""

    image: Image.Image
    mask: np.ndarray
    roi: str
    seed: int
    strength: float
    noise: str
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EditParams:
    """The parameters of one edit (what `Editor.edit` takes besides the image)."""

    roi: str
    seed: int = 0
    strength: float = 1.0
    noise: str = "region"
    preserve_background: bool = False


@dataclass(frozen=True)
class EditRequest:
    """One edit for `Editor.edit_requests`: an image (path, PIL image or uint8 array) and the edit's parameters."""

    image: object
    params: EditParams


@dataclass
class _Encoded:
    """Per-image state that re-edits reuse."""

    rgb: np.ndarray                 # uint8 input (H, W, 3)
    fit: SquareFit
    x: np.ndarray                   # (1, 3, S, S) model input
    masks: dict = field(default_factory=dict)  # roi -> (1, 1, S, S), quantised to 8-bit levels
    structure: np.ndarray | None = None
    texture: np.ndarray | None = None
    h: np.ndarray | None = None
    skip: np.ndarray | None = None
    key: str = ""                    # content hash of the decoded image
    edits: int = 0                   # edits made so far (re-edits take the crop path)
    rows: tuple | None = None        # (h, skip) as row tables for the sparse re-edit (`kernels.sparse_tail.to_rows`)
    base: np.ndarray | None = None   # (1, 3, S, S) unedited decoder output (strength 0)
    base_refined: dict = field(default_factory=dict)  # (roi, mask hash) -> (1, 3, S, S) RB of the unedited output


class Editor:
    """Chains the stages of one backend. Thread-compatible, not thread-safe (use one Editor per thread)."""

    def __init__(self, backend: Backend, manifest: dict, cache_size: int = 8, crop: bool = True,
                 sparse: bool | None = None):
        """crop: re-edit only the ROI's window (local tails). sparse: re-edit one region edit with the sparse tile
        graph (`sae_decoder_edit_sparse`) where the backend has it; None = the backend's preference
        (`Backend.sparse_reedit`)."""
        self.backend = backend
        cfg = manifest["model_config"]
        self.rois: tuple[str, ...] = tuple(manifest["rois"])
        self.size: int = int(cfg["image_size"])
        self.global_code_ch: int = int(cfg["sae"]["global_code_ch"])
        self.pixel_noise_shape = tuple(manifest.get("pixel_noise_shape") or ())
        self.injection_index = manifest.get("injection_index")
        self._cache: OrderedDict[str, _Encoded] = OrderedDict()
        self._chain_key: str | None = None  # image whose codes a chaining backend holds on its device
        self.cache_size = cache_size
        # Local tail: an edit changes the decoder output only within 1 px of the mask, and the RB's output only
        # within its receptive field beyond that; re-edits then run on the ROI's window and are pasted into the
        # cached unedited result (exact: pixels outside the window are provably unchanged).
        self.local = bool(manifest.get("local_tail"))
        self.crop = crop and self.local
        self.rb_radius = int(manifest.get("rb_radius", 0))
        self.sparse_tile = manifest.get("sparse_tile")
        want = getattr(backend, "sparse_reedit", False) if sparse is None else sparse
        self.sparse = bool(want and self.crop and self.sparse_tile and "sae_decoder_edit_sparse" in backend.stages())
        self.xi = None
        if self.local:
            self.xi = philox.tail_noise_map(manifest)

    # ---------------------------------------------------------------------------------------------- cache
    def use_cache(self, cache) -> None:
        """Make `cache` the per-image cache: any mapping with OrderedDict's `get`, item assignment,
        `move_to_end`, `popitem`, `len`, `keys` and `clear` (e.g. `ssae.serve.cache.EncodeCache`, which bounds
        bytes: the entry-count bound `cache_size` is then off). Entries already cached are carried over."""
        for k in list(self._cache.keys()):
            cache[k] = self._cache[k]
        self._cache = cache
        self.cache_size = sys.maxsize

    def clear_cache(self) -> None:
        """Forget every encoded image (the next edit of any image is a full edit)."""
        self._cache.clear()
        self._chain_key = None

    # ---------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, model: str | os.PathLike | None = None, backend: str = "auto", device: str | None = None,
             cache_size: int = 8) -> "Editor":
        """model: None (bundled), a checkpoint, an export folder or a preset name; backend: auto or a name."""
        src = resolve_model(model)
        be = create_backend(backend, src, device)
        return cls(be, _manifest_of(be), cache_size)

    # ---------------------------------------------------------------------------------------------- stages
    def _run(self, stage: str, timings: dict, **inputs) -> dict[str, np.ndarray]:
        t = time.perf_counter()
        with nvtx_range(stage):
            out = self.backend.run(stage, inputs)
            self.backend.synchronize()
        timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - t) * 1e3
        return out

    def _encode(self, image, timings: dict, need_codes: bool = True, rois: Sequence[str] = ()) -> _Encoded:
        rgb = load_image(image)
        key = hashlib.sha1(rgb.tobytes() + str(rgb.shape).encode()).hexdigest()
        enc = self._cache.get(key)
        if enc is None:
            fit = SquareFit(rgb.shape[0], rgb.shape[1], self.size)
            x = fit.forward_rgb(rgb).astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0
            enc = _Encoded(rgb, fit, np.ascontiguousarray(x, dtype=np.float32), key=key)
            self._cache[key] = enc
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
            timings["cache_hit"] = 1.0
        self._predict_masks(enc, rois, timings)
        if need_codes and enc.h is None:
            codes = self._run("sae_encoder", timings, image=enc.x)
            pre = self._run("sae_decoder_prefix", timings, structure=codes["structure"], texture=codes["texture"])
            enc.structure, enc.texture, enc.h, enc.skip = codes["structure"], codes["texture"], pre["h"], pre["skip"]
        return enc

    def _predict_masks(self, enc: _Encoded, rois: Sequence[str], timings: dict) -> None:
        """SMPN masks of `rois` into the image's cache: one single-ROI graph per missing ROI when only one or two are
        missing and the backend has them (a single-ROI edit then pays 1/5 of the SMPN), else the five-ROI graph.
        Masks are quantised to 8-bit levels, so they are exactly zero outside the ROI."""
        missing = [r for r in dict.fromkeys(rois) if r not in enc.masks]
        if not missing:
            return
        q = lambda m: np.round(m * 255.0) / np.float32(255.0)
        stages = self.backend.stages()
        if len(missing) <= 2 and all(f"smpn_{r}" in stages for r in missing):
            for r in missing:
                enc.masks[r] = q(self._run(f"smpn_{r}", timings, image=enc.x)["masks"])
            return
        allm = q(self._run("smpn", timings, image=enc.x)["masks"])
        enc.masks.update({r: allm[:, i: i + 1] for i, r in enumerate(self.rois)})

    def _stage_inputs(self, enc: _Encoded, mask, seed: int, strength, noise, win=None) -> dict:
        """Inputs of the edit stage for one edit, on the full image or a (y0, y1, x0, x1) window."""
        y0, y1, x0, x1 = win or (0, self.size, 0, self.size)
        def cut(a):  # no copy on the full image (the cached array is passed as is)
            return np.ascontiguousarray(a[..., y0:y1, x0:x1])

        if noise == "region":
            nz = self._region_noise(seed)
        elif noise == "pixel":
            if not self.pixel_noise_shape:
                raise ValueError("this model has no pixel-noise edit graph")
            stream = philox.STREAM_PIXEL + int(self.injection_index)
            if self.local:
                nz = philox.pixel_window([seed], stream, (self.size, self.size), (y0, y1, x0, x1),
                                         int(self.pixel_noise_shape[-1]))
            else:
                nz = philox.gaussian_batch([seed], stream, tuple(self.pixel_noise_shape))
        else:
            raise ValueError(f"unknown noise mode {noise!r} (region or pixel)")
        inputs = dict(h=cut(enc.h), skip=cut(enc.skip), texture=enc.texture, mask=cut(mask), noise=nz,
                      strength=np.full((1,), strength, np.float32))
        if self.local:
            inputs["xi"] = cut(self.xi)
        return inputs

    def _region_noise(self, seed: int) -> np.ndarray:
        """The texture-code direction n of a region edit, (1, D), from the seed."""
        return philox.region_noise([seed], self.global_code_ch)

    def _refine(self, pairs, coarse, masks, timings) -> np.ndarray:
        refined = np.empty_like(coarse)
        for roi in dict.fromkeys(r for r, _, _ in pairs):
            sel = [k for k, (r, _, _) in enumerate(pairs) if r == roi]
            refined[sel] = self._run(f"refine_{roi}", timings, image=coarse[sel], mask=masks[sel])["refined"]
        return refined

    def _window(self, masks: np.ndarray):
        """(outer, compute) windows around every non-zero mask pixel, or None when cropping would not pay."""
        ys, xs = np.nonzero(masks.max(axis=(0, 1)) > 0)
        if len(ys) == 0:
            return None
        s, r = self.size, self.rb_radius
        box = lambda m: (max(0, ys.min() - m), min(s, ys.max() + 1 + m), max(0, xs.min() - m), min(s, xs.max() + 1 + m))
        outer, comp = box(1 + r), box(2 + 2 * r)
        if (comp[1] - comp[0]) * (comp[3] - comp[2]) > 0.9 * s * s:
            return None
        return outer, comp

    def _base(self, enc: _Encoded, timings) -> np.ndarray:
        """The unedited decoder output (strength 0), cached per image."""
        if enc.base is None:
            zero = self._stage_inputs(enc, np.zeros((1, 1, self.size, self.size), np.float32), 0, 0.0, "region")
            enc.base = self._run("sae_decoder_edit", timings, **zero)["image"]
        return enc.base

    def _base_refined(self, enc: _Encoded, roi: str, mask: np.ndarray, timings) -> np.ndarray:
        """RB output of the unedited decoder output for this ROI and mask (cached per image)."""
        key = (roi, hashlib.sha1(mask.tobytes()).hexdigest())
        if key not in enc.base_refined:
            enc.base_refined[key] = self._run(f"refine_{roi}", timings, image=self._base(enc, timings),
                                              mask=mask)["refined"]
        return enc.base_refined[key]

    def _coarse_sparse(self, enc: _Encoded, seed: int, mask: np.ndarray, strength: float, timings) -> np.ndarray:
        """One region edit's decoder output (1, 3, S, S): the unedited output with the tiles touching the mask
        recomputed by the sparse graph (exact: no other pixel can change)."""
        t = time.perf_counter()
        plan = sparse_tail.plan_tiles(mask[0, 0], int(self.sparse_tile))
        if enc.rows is None:
            enc.rows = (sparse_tail.to_rows(enc.h), sparse_tail.to_rows(enc.skip))
        timings["sparse_plan"] = (time.perf_counter() - t) * 1e3
        rgb = self._run("sae_decoder_edit_sparse", timings, h_rows=enc.rows[0], skip_rows=enc.rows[1],
                        mask_rows=sparse_tail.to_rows(mask), patch_idx=plan.patch_idx, out_idx=plan.out_idx,
                        texture=enc.texture, noise=self._region_noise(seed),
                        strength=np.full((1,), strength, np.float32))["rgb"]
        coarse = self._base(enc, timings).copy()
        sparse_tail.scatter_rows(coarse, rgb, plan.out_idx)
        return coarse

    def _tail(self, encs: Sequence[_Encoded], pairs, strengths: Sequence[float], masks: np.ndarray, noise: str,
              window, timings) -> np.ndarray:
        """Edit tail and RB of N edits as batched calls: edit k is `pairs[k]` = (roi, index, seed) of image
        `encs[k]` (images may repeat) at `strengths[k]` with `masks[k]`. window: None = the full image; else
        (outer, compute) from `_window`: the tail runs on the compute window (one region edit: on the tiles
        touching the mask, when `self.sparse`) and the result is pasted into each image's cached unedited
        result (exact: pixels outside the window cannot change). Returns (N, 3, S, S)."""
        comp = None if window is None else window[1]
        if window is not None and self.sparse and len(pairs) == 1 and noise == "region":
            cy0, cy1, cx0, cx1 = comp
            crop = (slice(None), slice(None), slice(cy0, cy1), slice(cx0, cx1))
            coarse = self._coarse_sparse(encs[0], pairs[0][2], masks, strengths[0], timings)[crop]
            crop_masks = np.ascontiguousarray(masks[crop])
        else:
            feeds = [self._stage_inputs(encs[k], masks[k: k + 1], pairs[k][2], strengths[k], noise, comp)
                     for k in range(len(pairs))]
            batched = feeds[0] if len(feeds) == 1 else {  # the tail's noise map xi is shared
                n: feeds[0][n] if n == "xi" else np.concatenate([f[n] for f in feeds]) for n in feeds[0]}
            stage = "sae_decoder_edit" if noise == "region" else "sae_decoder_edit_pixel"
            coarse = self._run(stage, timings, **batched)["image"]
            crop_masks = batched["mask"]
        part = self._refine(pairs, coarse, crop_masks, timings)
        if window is None:
            return part
        (oy0, oy1, ox0, ox1), (cy0, cy1, cx0, cx1) = window
        out = np.concatenate([self._base_refined(encs[k], r, masks[k: k + 1], timings)
                              for k, (r, _, _) in enumerate(pairs)])
        out[..., oy0:oy1, ox0:ox1] = part[..., oy0 - cy0: oy1 - cy0, ox0 - cx0: ox1 - cx0]
        return out

    def _user_mask(self, mask: np.ndarray, enc: _Encoded) -> np.ndarray:
        m = np.asarray(mask, dtype=np.float32)
        if m.shape != enc.rgb.shape[:2]:
            raise ValueError(f"mask shape {m.shape} does not match the image ({enc.rgb.shape[0]}, {enc.rgb.shape[1]})")
        if not np.isfinite(m).all() or m.min() < 0 or m.max() > 1:
            raise ValueError("mask values must be finite and in [0, 1]")
        return (np.round(enc.fit.forward_mask(m) * 255.0) / np.float32(255.0))[None, None].astype(np.float32)

    def stage_feeds(self, image, roi: str = "hair", seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
        """Full-image inputs of every stage of this backend for one image, each made of the outputs of the stages
        before it (edit stages: `roi`, `seed`, strength 1; RBs: that edit with their own ROI's mask). Used by the
        benchmarks, the profiler and INT8 calibration."""
        self._roi_index(roi)
        enc = self._encode(image, {}, rois=self.rois)
        m = enc.masks[roi]
        feeds = {"smpn": {"image": enc.x}, "sae_encoder": {"image": enc.x},
                 "sae_decoder_prefix": {"structure": enc.structure, "texture": enc.texture},
                 "sae_decoder_edit": self._stage_inputs(enc, m, seed, 1.0, "region")}
        stages = self.backend.stages()
        if "sae_decoder_edit_pixel" in stages:
            feeds["sae_decoder_edit_pixel"] = self._stage_inputs(enc, m, seed, 1.0, "pixel")
        coarse = self.backend.run("sae_decoder_edit", feeds["sae_decoder_edit"])["image"]
        for i, r in enumerate(self.rois):
            feeds[f"refine_{r}"] = {"image": coarse, "mask": enc.masks[r]}
            feeds[f"smpn_{r}"] = {"image": enc.x}
        return {s: f for s, f in feeds.items() if s in stages}

    def _roi_index(self, roi: str) -> int:
        if roi not in self.rois:
            raise ValueError(f"unknown ROI {roi!r} (choose from {', '.join(self.rois)})")
        return self.rois.index(roi)

    # ---------------------------------------------------------------------------------------------- API
    def masks(self, image) -> dict[str, np.ndarray]:
        """Soft masks (float32 in [0, 1]) per ROI at the input image's size."""
        enc = self._encode(image, {}, need_codes=False, rois=self.rois)
        return {roi: enc.fit.restore_mask(enc.masks[roi][0, 0]) for roi in self.rois}

    def edit(self, image, roi: str = "hair", seed: int = 0, strength: float = 1.0, noise: str = "region",
             preserve_background: bool = False, mask: np.ndarray | None = None) -> EditResult:
        """Edit the texture of one ROI. Returns the edited image at the input's size.

        mask: optionally your own region mask (float in [0, 1], the input image's H x W) instead of the SMPN's;
        `roi` then only picks the refinement block."""
        return self.edit_many(image, [roi], [seed], strength=strength, noise=noise,
                              preserve_background=preserve_background, mask=mask)[0]

    def edit_many(self, image, rois: Sequence[str], seeds: Sequence[int], strength: float = 1.0,
                  noise: str = "region", preserve_background: bool = False,
                  mask: np.ndarray | None = None) -> list[EditResult]:
        """Every (roi, seed) pair of one image in one batched pass after a single encode (roi-major order)."""
        if not rois or not seeds:
            raise ValueError("edit_many needs at least one ROI and one seed")
        for r in rois:
            self._check_params(r, strength, noise)
        idx = [self.rois.index(r) for r in rois]
        seeds = [int(s) for s in seeds]
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        pairs = [(r, i, s) for r, i in zip(rois, idx) for s in seeds]
        if len(pairs) == 1 and noise == "region" and mask is None and self.backend.chains_on_device:
            enc = self._encode(image, timings, need_codes=False)
            refined, masks = self._edit_chained(enc, rois[0], seeds[0], strength, timings)
        else:
            enc = self._encode(image, timings, rois=rois if mask is None else ())  # a user mask replaces the SMPN
            refined, masks = self._edit_stages(enc, pairs, strength, noise, mask, timings)
        enc.edits += 1
        t_total = (time.perf_counter() - t0) * 1e3
        return [self._result(enc, refined[k], masks[k, 0], roi, seed, strength, noise, preserve_background,
                             timings, t_total) for k, (roi, _, seed) in enumerate(pairs)]

    def edit_requests(self, requests: Sequence[EditRequest]) -> list[EditResult | Exception]:
        """Many single edits, of one image or several, as batched passes (what a server's dynamic batching calls).

        Every image is encoded once (or found in the cache); first edits of images run the edit tail as one batched
        call per noise mode on the full image, re-edits one call per noise mode and ROI on the window around the
        union of their masks (a lone region re-edit: the sparse tiles); the RBs run batched per ROI. Each result
        equals `edit` of that request alone. One result per request, in order: an EditResult or the exception that
        request raised (a bad request does not fail the others)."""
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        results: list[EditResult | Exception | None] = [None] * len(requests)
        encs: list[_Encoded | None] = []
        params = [rq.params for rq in requests]
        for k, (rq, p) in enumerate(zip(requests, params)):
            try:
                self._check_params(p.roi, p.strength, p.noise)
                encs.append(self._encode(rq.image, timings, rois=[p.roi]))
            except Exception as e:  # noqa: BLE001 - returned as that request's result
                results[k] = e
                encs.append(None)
        # re-edits grouped per ROI, so that each group's window stays around one region (lips of many faces: small)
        groups: dict[tuple[str, bool, str], list[int]] = {}
        for k, p in enumerate(params):
            if results[k] is None:
                again = self.crop and encs[k].edits > 0
                groups.setdefault((p.noise, again, p.roi if again else ""), []).append(k)
        for (noise, again, _), idx in groups.items():
            masks = np.concatenate([encs[k].masks[params[k].roi] for k in idx])
            pairs = [(params[k].roi, self.rois.index(params[k].roi), int(params[k].seed)) for k in idx]
            try:
                refined = self._tail([encs[k] for k in idx], pairs, [params[k].strength for k in idx], masks,
                                     noise, self._window(masks) if again else None, timings)
            except Exception as e:  # noqa: BLE001 - the whole group failed (e.g. a model without pixel noise)
                for k in idx:
                    results[k] = e
                continue
            total = (time.perf_counter() - t0) * 1e3
            for n, k in enumerate(idx):
                p = params[k]
                results[k] = self._result(encs[k], refined[n], masks[n, 0], p.roi, int(p.seed), p.strength,
                                          noise, p.preserve_background, timings, total)
        for enc in {id(e): e for e in encs if e is not None}.values():
            enc.edits += 1
        return results  # type: ignore[return-value]

    def _check_params(self, roi: str, strength: float, noise: str) -> None:
        self._roi_index(roi)
        if not np.isfinite(strength):
            raise ValueError(f"strength must be a finite number, got {strength}")
        if noise not in NOISE_MODES:
            raise ValueError(f"unknown noise mode {noise!r} (region or pixel)")

    @staticmethod
    def _result(enc: _Encoded, refined: np.ndarray, mask: np.ndarray, roi: str, seed: int, strength: float,
                noise: str, preserve_background: bool, timings: dict, total_ms: float) -> EditResult:
        """A refined model-size edit (3, S, S) in [-1, 1] -> EditResult at the input image's size."""
        img = np.round((np.clip(refined, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(1, 2, 0)
        img = enc.fit.restore_rgb(img)
        m = enc.fit.restore_mask(mask)
        if preserve_background:
            img = composite(img, enc.rgb, m)
        return EditResult(Image.fromarray(img), m, roi, seed, float(strength), noise, dict(timings, total=total_ms))

    def _edit_chained(self, enc: _Encoded, roi: str, seed: int, strength: float, timings: dict):
        """One region edit on a backend that chains the whole pipeline on its device (`run_chain`: TensorRT, or
        PyTorch on CUDA, with CUDA graphs); a new edit of the image it holds replays only the tail (`run_reedit`)."""
        from .backend import BackendError
        t = time.perf_counter()
        out = None
        if self._chain_key == enc.key:
            try:
                out = self.backend.run_reedit(roi, seed, strength)
                stage = "chain_reedit"
            except BackendError:  # the device holds another image or ROI
                out = None
        if out is None:
            out = self.backend.run_chain(enc.x, roi, seed, strength)
            self._chain_key, stage = enc.key, "chain_full"
        timings[stage] = (time.perf_counter() - t) * 1e3
        enc.masks.setdefault(roi, out["mask"])
        return out["refined"], out["mask"]

    def _edit_stages(self, enc: _Encoded, pairs, strength: float, noise: str, mask, timings: dict):
        """The stage-by-stage path: (refined (N, 3, S, S), masks (N, 1, S, S)) for every (roi, index, seed) pair."""
        if mask is None:
            masks = np.concatenate([enc.masks[r] for r, _, _ in pairs])
        else:
            masks = np.repeat(self._user_mask(mask, enc), len(pairs), axis=0)
        window = self._window(masks) if (self.crop and enc.edits > 0) else None
        n = len(pairs)
        return self._tail([enc] * n, pairs, [strength] * n, masks, noise, window, timings), masks


def composite(edited: np.ndarray, original: np.ndarray, mask: np.ndarray, feather: float | None = None) -> np.ndarray:
    """Edited pixels inside a feathered ROI mask, the original outside (exact outside the feathered mask)."""
    h, w = mask.shape
    radius = feather if feather is not None else max(1.0, 0.01 * max(h, w))
    soft = np.asarray(Image.fromarray((np.clip(mask, 0, 1) * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255.0
    soft = np.maximum(soft, np.clip(mask, 0, 1))[..., None]
    return np.round(edited * soft + original * (1 - soft)).astype(np.uint8)


def _manifest_of(backend: Backend) -> dict:
    """The facts the Editor needs about the model behind a backend (its export manifest, or the torch model's)."""
    m = getattr(backend, "manifest", None)
    if m is not None:
        return m
    from ..export.stages import model_facts
    return model_facts(backend.model)
