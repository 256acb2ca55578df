"""The Editor: photo -> face crop -> SMPN masks -> encoder -> decoder prefix (cached per crop) -> edit tail -> RB ->
the edit's change pasted onto the photo.

```python
ed = Editor.load()                       # bundled model, fastest backend here
res = ed.edit("photo.jpg", roi="hair", seed=3, strength=1.0)
res.image.save("edited.png")             # PIL image at the photo's size; res.mask (photo size), res.timings (ms)
ed.edit("photo.jpg", roi="hair", reference="other.jpg")   # the hair takes the other photo's texture code
```

Framing: every photo goes through one framing step (`ssae.face`): the face is found (MTCNN), a square crop with the
training framing is cut at the model's size, edited there, and the result is pasted back at the photo's
resolution. `frame="whole"` edits the whole frame instead (no detection); `faces="all"` edits every face found.

Output: by default (`output="photo"`) the edit's *change*, the refined edit minus the refined unedited
reconstruction of the same crop, is added to the original photo under the region's feathered mask: the photo keeps
its own detail and sharpness inside the region, and every pixel outside the feathered mask is the input's, bit for
bit. `output="raw"` returns the model's own refined output for the crop (size x size px, with the crop's mask):
for research and for model-space metrics, not for users' photos.

One path per edit: whatever the cache holds, an edit runs the same stages on the same arrays (the tail on the
window around its mask, or on the tiles touching the mask with the sparse graph; the RB on that window), so the
same request gives the same bytes as a first edit, a cached re-edit, in `edit_many`, `edit_requests` or served.
Noise comes from the seed through the counter-based generator (`ssae.philox`), never from a backend's RNG,
so the same photo, ROI and seed give the same edit on every backend.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from ssae.data.transforms import from_model_array, to_model_array
from ssae.errors import ParamError
from ssae.pipeline import EDIT, EDIT_PIXEL, EDIT_SPARSE, ENCODER, PREFIX, SMPN, check_edit, refine_for, smpn_for
from ssae.face import FaceCrop, FaceDetector, feather, frame_faces
from ssae import philox
from ssae.kernels import tile_plan
from ssae.runtime.profiling.nvtx import nvtx_range
from .backend import Backend, BackendError
from .images import DEFAULT_LIMITS, ImageError, ImageLimits, load_image
from .registry import create_backend, resolve_model

NOISE_MODES = ("region", "pixel")
#: output="photo": the change pasted onto the photo (users); "raw": the model's crop output (research, metrics).
OUTPUTS = ("photo", "raw")
#: frame="face": find the face and edit its crop; "whole": the whole frame as one crop (no detection).
FRAMES = ("face", "whole")
#: faces="largest": the largest face found; "all": every face found.
FACES = ("largest", "all")
#: The choices of an edit's string parameters (`choice_problem` checks them for every caller).
CHOICES = {"noise": NOISE_MODES, "output": OUTPUTS, "frame": FRAMES, "faces": FACES}
#: Feathering of the region mask for the paste, in crop pixels (Gaussian sigma).
FEATHER = 1.5


def choice_problem(name: str, value) -> str | None:
    """None when `value` is one of the choices of edit parameter `name` (`CHOICES`), else the one-line reason."""
    ok = CHOICES[name]
    return None if value in ok else f"{name} must be one of {', '.join(ok)}, got {value!r}"


class FaceNotFoundError(ImageError):
    """No face was found where one is needed (one-line message)."""


@dataclass
class EditResult:
    """One edit. output="photo": `image` (PIL) and `mask` (float32 in [0, 1]) at the photo's size; output="raw":
    both at the model's crop size. `faces`: the photo box (x0, y0, x1, y1) of each crop edited; `timings`: ms.
    The photo-size mask is pasted when first read (most callers only want the image)."""

    image: Image.Image
    roi: str
    seed: int
    strength: float
    noise: str
    timings: dict[str, float] = field(default_factory=dict)
    faces: list[tuple[int, int, int, int]] = field(default_factory=list)
    _mask: object = field(default=None, repr=False)   # the mask, or a function that makes it

    @property
    def mask(self) -> np.ndarray:
        if callable(self._mask):
            self._mask = self._mask()
        return self._mask


@dataclass(frozen=True)
class EditParams:
    """The parameters of one edit (what `Editor.edit` takes besides the photo). `reference`: a photo (path, PIL
    image, array or bytes) whose texture code the region takes instead of the seed's random one."""

    roi: str
    seed: int = 0
    strength: float = 1.0
    noise: str = "region"
    reference: object = None
    output: str = "photo"
    frame: str = "face"
    faces: str = "largest"


@dataclass(frozen=True)
class EditRequest:
    """One edit for `Editor.edit_requests`: an image (path, PIL image or uint8 array) and the edit's parameters."""

    image: object
    params: EditParams


@dataclass
class _Encoded:
    """One crop of a photo and what re-edits reuse."""

    crop: FaceCrop
    rgb: Callable[[], np.ndarray] = field(repr=False)  # the photo (a function: caches count its bytes once)
    key: str = ""                    # photo hash + framing + face index
    x: np.ndarray | None = None      # (1, 3, S, S) model input, cut on the host when first needed (`Editor._input`)
    masks: dict = field(default_factory=dict)  # roi -> (1, 1, S, S), quantised to 8-bit levels
    structure: np.ndarray | None = None
    texture: np.ndarray | None = None
    h: np.ndarray | None = None
    skip: np.ndarray | None = None
    rows: tuple | None = None        # (h, skip) as row tables for the sparse tail (`kernels.tile_plan.to_rows`)
    base: np.ndarray | None = None   # (1, 3, S, S) unedited decoder output (strength 0)
    base_refined: dict = field(default_factory=dict)  # (roi, mask hash, window) or (roi, "chain") -> RB of `base`


@dataclass
class _Photo:
    """A decoded photo and its crops (largest face first)."""

    rgb: np.ndarray                  # uint8 (H, W, 3)
    crops: list[_Encoded]


@dataclass(frozen=True)
class PreparedPhoto:
    """A photo decoded and framed once (`Editor.prepare`). Give it to `edit`, `edit_many`, `masks` or as a reference
    in place of the image: the call then skips reading and hashing the photo (re-edits at interactive rates). It
    holds its own copy of the pixels and its encoded crops, whatever the Editor's cache evicts, and belongs to the
    Editor that prepared it."""

    width: int
    height: int
    frame: str
    photo: _Photo = field(repr=False)
    owner: object = field(repr=False)


class Editor:
    """Chains the stages of one backend. Thread-compatible, not thread-safe (use one Editor per thread)."""

    def __init__(self, backend: Backend, cache_size: int = 8, detector: FaceDetector | None = None,
                 limits: ImageLimits = DEFAULT_LIMITS):
        """backend: any `Backend` (`ssae.runtime.registry.create_backend`); the model's facts come from it.
        cache_size: photos kept encoded. detector: the face detector (default: one shared per process). limits:
        the largest photo accepted (checked before decoding)."""
        self.backend = backend
        self.limits = limits
        manifest = backend.manifest
        cfg = manifest["model_config"]
        self.rois: tuple[str, ...] = tuple(manifest["rois"])
        self.size: int = int(cfg["image_size"])
        self.global_code_ch: int = int(cfg["sae"]["global_code_ch"])
        self.pixel_noise_shape = tuple(manifest.get("pixel_noise_shape") or ())
        self.injection_index = manifest.get("injection_index")
        self._cache: OrderedDict[str, _Photo] = OrderedDict()
        self._token = object()  # identifies this Editor's prepared photos
        self._chain_key: str | None = None  # crop whose codes the device chain holds
        self._device_chain = backend.device_chain()
        self.cache_size = cache_size
        self._detector = detector
        # Local tail: an edit changes the decoder output only within 1 px of the mask, and the RB's output only
        # within its receptive field beyond that; every edit runs on the ROI's window and is pasted into the
        # unedited result (exact: pixels outside the window provably do not change).
        self.local = bool(manifest.get("local_tail"))
        self.rb_radius = int(manifest.get("rb_radius", 0))
        self.sparse_tile = manifest.get("sparse_tile")
        #: Run region edits' tail on the tiles touching the mask (`EDIT_SPARSE`) where the backend prefers it and has
        #: the graph (benchmarks compare it with the window by setting it).
        self.sparse = bool(backend.sparse_reedit and self.local and self.sparse_tile
                           and EDIT_SPARSE in backend.stages())
        self.xi = philox.tail_noise_map(manifest) if self.local else None

    # ---------------------------------------------------------------------------------------------- cache
    def use_cache(self, cache) -> None:
        """Make `cache` the per-photo cache: any mapping with OrderedDict's `get`, item assignment,
        `move_to_end`, `popitem`, `len`, `keys` and `clear` (e.g. `ssae.runtime.serve.cache.EncodeCache`, which bounds
        bytes: the entry-count bound `cache_size` is then off). Entries already cached are carried over."""
        for k in list(self._cache.keys()):
            cache[k] = self._cache[k]
        self._cache = cache
        self.cache_size = sys.maxsize

    def clear_cache(self) -> None:
        """Forget every encoded photo (the next edit of any photo encodes it again)."""
        self._cache.clear()
        self._chain_key = None

    # ---------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, model: str | os.PathLike | None = None, backend: str = "auto", device: str | None = None,
             cache_size: int = 8, limits: ImageLimits = DEFAULT_LIMITS, precision: str = "auto") -> "Editor":
        """model: None (bundled), a checkpoint, an export folder or a preset name; backend: "auto" or an engine
        (`ssae.runtime.registry.ENGINES`); precision: "auto" (the engine's default) or one it offers."""
        src = resolve_model(model)
        return cls(create_backend(backend, src, precision, device), cache_size, limits=limits)

    # ---------------------------------------------------------------------------------------------- stages
    def _run(self, stage: str, timings: dict, **inputs) -> dict[str, np.ndarray]:
        t = time.perf_counter()
        with nvtx_range(stage):
            out = self.backend.run(stage, inputs)
            self.backend.synchronize()
        timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - t) * 1e3
        return out

    def prepare(self, image, frame: str = "face") -> PreparedPhoto:
        """Decode and frame a photo once (faces found, crops cut when first needed, codes cached as they are
        computed), for many edits of it: see `PreparedPhoto`. Raises as `edit` does (no face, bad image)."""
        self._check_choices(frame=frame)
        rgb = load_image(image, self.limits)
        if rgb is image:  # the caller's array: the prepared photo keeps pixels the caller cannot change
            rgb = rgb.copy()
        ph = self._photo(rgb, frame, {})
        return PreparedPhoto(rgb.shape[1], rgb.shape[0], frame, ph, self._token)

    def _photo(self, image, frame: str, timings: dict, what: str = "the photo") -> _Photo:
        """The decoded photo and its crops, from the cache or framed now (or the photo of a `PreparedPhoto`)."""
        if isinstance(image, PreparedPhoto):
            if image.owner is not self._token:
                raise ParamError("this PreparedPhoto belongs to another Editor: prepare it with this one")
            if image.frame != frame:
                raise ParamError(f"the photo was prepared with frame={image.frame!r}, not frame={frame!r}")
            timings["cache_hit"] = 1.0
            return image.photo
        t = time.perf_counter()
        rgb = np.ascontiguousarray(load_image(image, self.limits))
        h = hashlib.sha1(memoryview(rgb).cast("B"))
        h.update(f"{rgb.shape}|{frame}".encode())
        key = h.hexdigest()
        timings["decode"] = timings.get("decode", 0.0) + (time.perf_counter() - t) * 1e3
        ph = self._cache.get(key)
        if ph is not None:
            self._cache.move_to_end(key)
            timings["cache_hit"] = 1.0
            return ph
        t = time.perf_counter()
        if frame == "whole":
            crops = [FaceCrop.whole_frame(rgb.shape[0], rgb.shape[1], self.size)]
        else:
            crops = frame_faces(rgb, self.size, self._detector)
            timings["detect"] = (time.perf_counter() - t) * 1e3
            if not crops:
                raise FaceNotFoundError(f"no face found in {what} (edit the whole frame instead: frame='whole', "
                                        f"--whole-frame)")
        encs = [_Encoded(c, lambda: rgb, key=f"{key}/{i}") for i, c in enumerate(crops)]
        ph = _Photo(rgb, encs)
        self._cache[key] = ph
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return ph

    def _input(self, enc: _Encoded, timings: dict) -> np.ndarray:
        """The crop's model input, cut on the host on first use (device chains that frame on the device never
        ask for it)."""
        if enc.x is None:
            t = time.perf_counter()
            enc.x = to_model_array(enc.crop.cut_rgb(enc.rgb()))
            timings["frame"] = timings.get("frame", 0.0) + (time.perf_counter() - t) * 1e3
        return enc.x

    def _codes(self, enc: _Encoded, timings: dict) -> None:
        if enc.texture is None:
            codes = self._run(ENCODER, timings, image=self._input(enc, timings))
            enc.structure, enc.texture = codes["structure"], codes["texture"]

    def _prefix(self, enc: _Encoded, timings: dict) -> None:
        self._codes(enc, timings)
        if enc.h is None:
            pre = self._run(PREFIX, timings, structure=enc.structure, texture=enc.texture)
            enc.h, enc.skip = pre["h"], pre["skip"]

    def _predict_masks(self, enc: _Encoded, rois: Sequence[str], timings: dict) -> None:
        """SMPN masks of `rois` into the crop's cache: one single-ROI graph per missing ROI when only one or two are
        missing and the backend has them (a single-ROI edit then pays 1/5 of the SMPN), else the five-ROI graph.
        Masks are quantised to 8-bit levels, so they are exactly zero outside the ROI."""
        missing = [r for r in dict.fromkeys(rois) if r not in enc.masks]
        if not missing:
            return
        stages = self.backend.stages()
        if len(missing) <= 2 and all(smpn_for(r) in stages for r in missing):
            for r in missing:
                enc.masks[r] = _quantise(self._run(smpn_for(r), timings, image=self._input(enc, timings))["masks"])
            return
        allm = _quantise(self._run(SMPN, timings, image=self._input(enc, timings))["masks"])
        enc.masks.update({r: allm[:, i: i + 1] for i, r in enumerate(self.rois)})

    def _stage_inputs(self, enc: _Encoded, mask, direction, seed: int, strength, noise, win=None) -> dict:
        """Inputs of the edit stage for one edit, on the full crop or a (y0, y1, x0, x1) window. direction: the
        region edit's texture-code direction (1, D); pixel edits draw their noise from `seed`."""
        y0, y1, x0, x1 = win or (0, self.size, 0, self.size)

        def cut(a):  # no copy on the full crop (the cached array is passed as is)
            return np.ascontiguousarray(a[..., y0:y1, x0:x1])

        if noise == "region":
            nz = direction
        else:
            if not self.pixel_noise_shape:
                raise ParamError("this model has no pixel-noise edit graph")
            stream = philox.STREAM_PIXEL + int(self.injection_index)
            if self.local:
                nz = philox.pixel_window([seed], stream, (self.size, self.size), (y0, y1, x0, x1),
                                         int(self.pixel_noise_shape[-1]))
            else:
                nz = philox.gaussian_batch([seed], stream, tuple(self.pixel_noise_shape))
        inputs = dict(h=cut(enc.h), skip=cut(enc.skip), texture=enc.texture, mask=cut(mask), noise=nz,
                      strength=np.full((1,), strength, np.float32))
        if self.local:
            inputs["xi"] = cut(self.xi)
        return inputs

    def _window(self, mask: np.ndarray):
        """(outer, compute) windows (y0, y1, x0, x1) around every non-zero pixel of a (1, 1, S, S) mask: the
        pixels an edit can change, and the part of the crop the tail and the RB must see to compute them. The
        full crop for models without a local tail; None when the mask is empty."""
        s = self.size
        if not self.local:
            return (0, s, 0, s), (0, s, 0, s)
        ys, xs = np.nonzero(mask[0, 0] > 0)
        if len(ys) == 0:
            return None
        r = self.rb_radius
        box = lambda m: (max(0, ys.min() - m), min(s, ys.max() + 1 + m), max(0, xs.min() - m), min(s, xs.max() + 1 + m))
        return box(1 + r), box(2 + 2 * r)

    def _base(self, enc: _Encoded, timings) -> np.ndarray:
        """The unedited decoder output (strength 0) of the full crop, cached."""
        if enc.base is None:
            zero = np.zeros((1, 1, self.size, self.size), np.float32)
            feed = self._stage_inputs(enc, zero, self._direction(0, None), 0, 0.0, "region")
            enc.base = self._run(EDIT, timings, **feed)["image"]
        return enc.base

    def _base_refined(self, enc: _Encoded, roi: str, mask: np.ndarray, comp, timings) -> np.ndarray:
        """RB output of the unedited decoder output for this ROI and mask on the compute window (cached)."""
        key = (roi, hashlib.sha1(mask.tobytes()).hexdigest(), comp)
        if key not in enc.base_refined:
            cy0, cy1, cx0, cx1 = comp
            enc.base_refined[key] = self._run(
                refine_for(roi), timings, image=np.ascontiguousarray(self._base(enc, timings)[..., cy0:cy1, cx0:cx1]),
                mask=np.ascontiguousarray(mask[..., cy0:cy1, cx0:cx1]))["refined"]
        return enc.base_refined[key]

    def _direction(self, seed: int, reference_texture: np.ndarray | None, enc: _Encoded | None = None) -> np.ndarray:
        """The region edit's texture-code direction n (1, D): from the seed, or toward a reference's texture code
        (S' = S + strength (S_ref - S) M)."""
        if reference_texture is None:
            return philox.region_noise([seed], self.global_code_ch)
        return np.ascontiguousarray(reference_texture - enc.texture, dtype=np.float32)

    def _coarse(self, enc: _Encoded, mask, direction, seed, strength, noise, comp, timings) -> np.ndarray:
        """The edited decoder output on the compute window (1, 3, ch, cw)."""
        cy0, cy1, cx0, cx1 = comp
        if self.sparse and noise == "region":
            t = time.perf_counter()
            plan = tile_plan.plan_tiles(mask[0, 0], int(self.sparse_tile))
            if enc.rows is None:
                enc.rows = (tile_plan.to_rows(enc.h), tile_plan.to_rows(enc.skip))
            timings["sparse_plan"] = timings.get("sparse_plan", 0.0) + (time.perf_counter() - t) * 1e3
            rgb = self._run(EDIT_SPARSE, timings, h_rows=enc.rows[0], skip_rows=enc.rows[1],
                            mask_rows=tile_plan.to_rows(mask), patch_idx=plan.patch_idx, out_idx=plan.out_idx,
                            texture=enc.texture, noise=direction, strength=np.full((1,), strength, np.float32))["rgb"]
            coarse = self._base(enc, timings).copy()
            tile_plan.scatter_rows(coarse, rgb, plan.out_idx)
            return np.ascontiguousarray(coarse[..., cy0:cy1, cx0:cx1])
        stage = EDIT if noise == "region" else EDIT_PIXEL
        return self._run(stage, timings, **self._stage_inputs(enc, mask, direction, seed, strength, noise, comp))["image"]

    def _edit_crop(self, enc: _Encoded, roi: str, mask: np.ndarray, seed: int, strength: float, noise: str,
                   reference_texture: np.ndarray | None, timings: dict):
        """One edit of one crop: (refined window, unedited refined window, outer window, compute window), or
        None when the mask is empty (nothing to change)."""
        self._prefix(enc, timings)
        win = self._window(mask)
        if win is None:
            return None
        outer, comp = win
        direction = self._direction(seed, reference_texture, enc) if noise == "region" else None
        coarse = self._coarse(enc, mask, direction, seed, strength, noise, comp, timings)
        cy0, cy1, cx0, cx1 = comp
        refined = self._run(refine_for(roi), timings, image=coarse,
                            mask=np.ascontiguousarray(mask[..., cy0:cy1, cx0:cx1]))["refined"]
        return refined, self._base_refined(enc, roi, mask, comp, timings), outer, comp

    def _edit_chained(self, enc: _Encoded, roi: str, seed: int, strength: float, timings: dict):
        """One region edit on the backend's device chain (TensorRT, or PyTorch on CUDA, with CUDA graphs), framed on
        the host; a new edit of the crop and ROI it holds replays only the tail (`DeviceChain.reedit`; a full edit
        predicts only its ROI's mask). The unedited reference is the same chain at strength 0 (cached per ROI). Same
        tuple as `_edit_crop`."""
        dc = self._device_chain

        def chain(s):
            t = time.perf_counter()
            out = None
            if self._chain_key == enc.key:
                try:
                    out, stage = dc.reedit(roi, seed, s), "chain_reedit"
                except BackendError:  # the device holds another crop or ROI
                    out = None
            if out is None:
                out, stage = dc.full(self._input(enc, timings), roi, seed, s, single_roi=True), "chain_full"
                self._chain_key = enc.key
            timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - t) * 1e3
            return out

        out = chain(strength)
        enc.masks.setdefault(roi, out["mask"])
        key = (roi, "chain")
        if key not in enc.base_refined:
            enc.base_refined[key] = chain(0.0)["refined"]
        full = (0, self.size, 0, self.size)
        return out["refined"], enc.base_refined[key], full, full

    def _edit_photo_on_device(self, ph: _Photo, enc: _Encoded, p: EditParams, canvas: "_Canvas", timings: dict):
        """One face edited by a device chain that frames and pastes on the device (`DeviceChain.edit_photo`), its
        pixels added to `canvas`: the crop's mask, or None when the chain frames on the host."""
        t = time.perf_counter()
        pp = self._device_chain.edit_photo(ph.rgb, enc.key, enc.crop, p.roi, p.seed, p.strength, FEATHER)
        if pp is None:
            return None
        self._chain_key = None  # the chain's held crop is now its own business (it knows the photo by its key)
        stage = f"chain_{pp.kind}"
        timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - t) * 1e3
        enc.masks.setdefault(p.roi, pp.mask)
        if pp.box is not None:
            canvas.add(pp.box, pp.patch)
        return pp.mask

    def _reference_texture(self, reference, frame: str, timings: dict) -> np.ndarray:
        """The texture code (1, D) of a reference photo's largest face (or whole frame)."""
        enc = self._photo(reference, frame, timings, what="the reference image").crops[0]
        self._codes(enc, timings)
        return enc.texture

    def _check_params(self, roi: str, strength: float, noise: str, output: str = "photo", frame: str = "face",
                      faces: str = "largest", reference=None) -> None:
        check_edit(roi, self.rois, strength)
        if noise not in NOISE_MODES:
            raise ParamError(f"unknown noise mode {noise!r} (region or pixel)")
        self._check_choices(output=output, frame=frame, faces=faces)
        if reference is not None and noise != "region":
            raise ParamError("a reference edit takes the reference's texture code for the whole region: "
                             "use noise='region'")
        if output == "raw" and faces == "all":
            raise ParamError("output='raw' returns one crop: use faces='largest'")

    @staticmethod
    def _check_choices(**values) -> None:
        for name, v in values.items():
            why = choice_problem(name, v)
            if why:
                raise ParamError(why)

    def _roi_index(self, roi: str) -> int:
        return check_edit(roi, self.rois, 0.0)

    def _user_mask(self, mask: np.ndarray, rgb: np.ndarray, enc: _Encoded) -> np.ndarray:
        m = np.asarray(mask, dtype=np.float32)
        if m.shape != rgb.shape[:2]:
            raise ParamError(f"mask shape {m.shape} does not match the image ({rgb.shape[0]}, {rgb.shape[1]})")
        if not np.isfinite(m).all() or m.min() < 0 or m.max() > 1:
            raise ParamError("mask values must be finite and in [0, 1]")
        return _quantise(enc.crop.cut_mask(m)[None, None])

    # ---------------------------------------------------------------------------------------------- API
    def masks(self, image, frame: str = "face", faces: str = "largest") -> dict[str, np.ndarray]:
        """Soft masks (float32 in [0, 1]) per ROI at the photo's size (faces="all": the union over faces)."""
        self._check_choices(frame=frame, faces=faces)
        ph = self._photo(image, frame, {})
        out = {r: np.zeros(ph.rgb.shape[:2], np.float32) for r in self.rois}
        for enc in ph.crops[: None if faces == "all" else 1]:
            self._predict_masks(enc, self.rois, {})
            for r in self.rois:
                np.maximum(out[r], enc.crop.paste_mask(enc.masks[r][0, 0]), out=out[r])
        return out

    def edit(self, image, roi: str = "hair", seed: int = 0, strength: float = 1.0, noise: str = "region", *,
             reference=None, output: str = "photo", frame: str = "face", faces: str = "largest",
             mask: np.ndarray | None = None) -> EditResult:
        """Edit the texture of one ROI of a photo. Returns the edited photo at its own size (see the module doc).

        reference: a photo whose texture code the region takes (instead of the seed's random direction).
        mask: optionally your own region mask (float in [0, 1], the photo's H x W) instead of the SMPN's; `roi`
        then only picks the refinement block."""
        return self.edit_many(image, [roi], [seed], strength=strength, noise=noise, reference=reference,
                              output=output, frame=frame, faces=faces, mask=mask)[0]

    def edit_many(self, image, rois: Sequence[str], seeds: Sequence[int], strength: float = 1.0,
                  noise: str = "region", *, reference=None, output: str = "photo", frame: str = "face",
                  faces: str = "largest", mask: np.ndarray | None = None) -> list[EditResult]:
        """Every (roi, seed) pair of one photo after a single framing and encode (roi-major order); each result
        equals `edit` of that pair alone."""
        if not rois or not seeds:
            raise ParamError("edit_many needs at least one ROI and one seed")
        for r in rois:
            self._check_params(r, strength, noise, output, frame, faces, reference)
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        ph = self._photo(image, frame, timings)
        ref = None if reference is None else self._reference_texture(reference, frame, timings)
        out = []
        for r in rois:
            for s in seeds:
                out.append(self._one(ph, EditParams(r, int(s), float(strength), noise, None, output, frame, faces),
                                     ref, mask, timings, t0))
        return out

    def edit_requests(self, requests: Sequence[EditRequest]) -> list[EditResult | Exception]:
        """Many single edits, of one photo or several (what a server's batching calls): each photo is framed and
        encoded once (or found in the cache). One result per request, in order: an EditResult equal to `edit` of
        that request alone, or the exception that request raised (a bad request does not fail the others)."""
        t0 = time.perf_counter()
        results: list[EditResult | Exception] = []
        for rq in requests:
            p = rq.params
            timings: dict[str, float] = {}
            try:
                self._check_params(p.roi, p.strength, p.noise, p.output, p.frame, p.faces, p.reference)
                ph = self._photo(rq.image, p.frame, timings)
                ref = None if p.reference is None else self._reference_texture(p.reference, p.frame, timings)
                results.append(self._one(ph, p, ref, None, timings, t0))
            except Exception as e:  # noqa: BLE001 - returned as that request's result
                results.append(e)
        return results

    def _one(self, ph: _Photo, p: EditParams, ref_texture, user_mask, timings: dict, t0: float) -> EditResult:
        """One edit of a framed photo: every selected crop edited and its change pasted (or the raw crop)."""
        crops = ph.crops[: None if p.faces == "all" else 1]
        canvas = _Canvas(ph.rgb)
        pasted: list[tuple[FaceCrop, np.ndarray]] = []   # (crop, mask) of each face, for the photo-size mask
        raw = None
        chained = self._device_chain is not None and user_mask is None and ref_texture is None and p.noise == "region"
        for enc in crops:
            # a face whose crop overlaps an earlier face's edit is pasted on the host, onto that edit
            if chained and p.output == "photo" and not canvas.overlaps(enc.crop.photo_box()):
                m = self._edit_photo_on_device(ph, enc, p, canvas, timings)
                if m is not None:
                    pasted.append((enc.crop, m[0, 0]))
                    continue
            if user_mask is not None:
                m = self._user_mask(user_mask, ph.rgb, enc)
            else:
                self._predict_masks(enc, [p.roi], timings)
                m = enc.masks.get(p.roi)
            if chained:
                parts = self._edit_chained(enc, p.roi, p.seed, p.strength, timings)
                m = enc.masks[p.roi]
            else:
                parts = self._edit_crop(enc, p.roi, m, p.seed, p.strength, p.noise, ref_texture, timings)
            t = time.perf_counter()
            if p.output == "raw":
                raw = (self._raw(enc, p.roi, m, parts, timings), m[0, 0])
                continue
            if parts is not None:
                refined, base, (oy0, oy1, ox0, ox1), (cy0, cy1, cx0, cx1) = parts
                change = np.zeros((self.size, self.size, 3), np.float32)
                diff = (refined[0] - base[0])[:, oy0 - cy0: oy1 - cy0, ox0 - cx0: ox1 - cx0]
                change[oy0:oy1, ox0:ox1] = diff.transpose(1, 2, 0) * np.float32(127.5)
                done = enc.crop.change_patch(canvas.current(), change, feather(m[0, 0], FEATHER))
                if done is not None:
                    canvas.add(*done)
            pasted.append((enc.crop, m[0, 0]))
            timings["composite"] = timings.get("composite", 0.0) + (time.perf_counter() - t) * 1e3
        boxes = [c.crop.photo_box() for c in crops]
        if raw is not None:
            total = (time.perf_counter() - t0) * 1e3
            return EditResult(Image.fromarray(raw[0]), p.roi, p.seed, float(p.strength), p.noise,
                              dict(timings, total=total), boxes, raw[1])
        t = time.perf_counter()
        image = canvas.image()
        timings["composite"] = timings.get("composite", 0.0) + (time.perf_counter() - t) * 1e3
        total = (time.perf_counter() - t0) * 1e3
        shape = ph.rgb.shape[:2]
        return EditResult(image, p.roi, p.seed, float(p.strength), p.noise, dict(timings, total=total), boxes,
                          lambda: _union_mask(shape, pasted))

    def _raw(self, enc: _Encoded, roi: str, mask: np.ndarray, parts, timings) -> np.ndarray:
        """The model's refined output of the whole crop (uint8 (S, S, 3)): the RB of the unedited output with the
        edit's window pasted in."""
        full = (0, self.size, 0, self.size)
        if parts is not None and parts[3] == full:
            refined = parts[0]
        else:
            refined = self._base_refined(enc, roi, mask, full, timings).copy()
            if parts is not None:
                r, _, (oy0, oy1, ox0, ox1), (cy0, cy1, cx0, cx1) = parts
                refined[..., oy0:oy1, ox0:ox1] = r[..., oy0 - cy0: oy1 - cy0, ox0 - cx0: ox1 - cx0]
        return from_model_array(refined)

    def stage_feeds(self, image, roi: str = "hair", seed: int = 0, frame: str = "face") -> dict[str, dict[str, np.ndarray]]:
        """Full-crop inputs of every stage of this backend for one photo's largest face, each made of the outputs
        of the stages before it (edit stages: `roi`, `seed`, strength 1; RBs: that edit with their own ROI's
        mask). Used by the benchmarks, the profiler and INT8 calibration."""
        self._roi_index(roi)
        enc = self._photo(image, frame, {}).crops[0]
        self._predict_masks(enc, self.rois, {})
        self._prefix(enc, {})
        m = enc.masks[roi]
        direction = self._direction(seed, None)
        x = self._input(enc, {})
        feeds = {SMPN: {"image": x}, ENCODER: {"image": x},
                 PREFIX: {"structure": enc.structure, "texture": enc.texture},
                 EDIT: self._stage_inputs(enc, m, direction, seed, 1.0, "region")}
        stages = self.backend.stages()
        if EDIT_PIXEL in stages:
            feeds[EDIT_PIXEL] = self._stage_inputs(enc, m, None, seed, 1.0, "pixel")
        coarse = self.backend.run(EDIT, feeds[EDIT])["image"]
        for r in self.rois:
            feeds[refine_for(r)] = {"image": coarse, "mask": enc.masks[r]}
            feeds[smpn_for(r)] = {"image": x}
        return {s: f for s, f in feeds.items() if s in stages}


class _Canvas:
    """The edited photo as the original plus the patches of its edited faces: the photo is copied once, into the
    result image (and into a working copy only when a face must be pasted onto an earlier one)."""

    def __init__(self, rgb: np.ndarray):
        self.rgb = rgb
        self.patches: list[tuple[tuple[int, int, int, int], np.ndarray]] = []   # not yet in the working copy
        self.boxes: list[tuple[int, int, int, int]] = []                         # every patch's box
        self._work: np.ndarray | None = None

    def add(self, box: tuple[int, int, int, int], patch: np.ndarray) -> None:
        self.patches.append((box, patch))
        self.boxes.append(box)

    def overlaps(self, box: tuple[int, int, int, int]) -> bool:
        """Whether `box` (x0, y0, x1, y1) meets any edited pixels."""
        x0, y0, x1, y1 = box
        return any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in self.boxes)

    def current(self) -> np.ndarray:
        """The pixels as edited so far (the original itself while nothing is edited: read only)."""
        if self.patches:
            if self._work is None:
                self._work = self.rgb.copy()
            for (x0, y0, x1, y1), patch in self.patches:
                self._work[y0:y1, x0:x1] = patch
            self.patches = []
        return self.rgb if self._work is None else self._work

    def image(self) -> Image.Image:
        img = Image.fromarray(self.rgb if self._work is None else self._work)
        for (x0, y0, _, _), patch in self.patches:
            img.paste(Image.fromarray(patch), (x0, y0))
        return img


def _union_mask(shape, pasted) -> np.ndarray:
    """The photo-size mask of every edited face: the union (maximum) of each crop's mask pasted back."""
    out = np.zeros(shape, np.float32)
    for crop, m in pasted:
        np.maximum(out, crop.paste_mask(m), out=out)
    return out


def _quantise(m: np.ndarray) -> np.ndarray:
    """Masks to 8-bit levels (exact zeros outside the region)."""
    return (np.round(m * 255.0) / np.float32(255.0)).astype(np.float32)
