"""Face framing: the one geometry between a photo and the model's square crop, for training and for edits.

A `FaceCrop` is a similarity transform (scale, rotation, translation) from the crop's pixel coordinates to the
photo's: `x + i y = z (u + i v) + t` with complex z, in continuous coordinates (pixel (i, j) covers
[j, j+1) x [i, i+1)). It is fitted to the detector's five landmarks so that they land on `TEMPLATE`, the mean
landmark positions of the LFW Part Labels training images (funneled LFW: the framing the models are trained on).

Bounded memory on photos of any size: `cut_rgb` box-reduces (horizontally, then vertically) only the part of the photo under the crop to about the
crop's resolution before the sub-pixel warp, pads at that reduced size (edge pixels replicated where the crop leaves
the photo), and never builds a padded copy of the photo; `paste_change` and `paste_mask` write only the photo pixels
under the region being pasted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

#: Where the five landmarks (left eye, right eye, nose tip, left and right mouth corner) sit in the crop, as
#: fractions of its side: the mean MTCNN landmarks of the 1500 LFW Part Labels training images (250 x 250 px,
#: funneled). Re-derive with `scripts/framing_template.py`.
TEMPLATE = np.array([
    [0.4182, 0.4585],
    [0.5911, 0.4529],
    [0.5062, 0.5569],
    [0.4327, 0.6473],
    [0.5868, 0.6427],
])


@dataclass(frozen=True)
class FaceCrop:
    """Crop (u, v) -> photo (x, y): x = a u - b v + tx, y = b u + a v + ty; the crop is size x size pixels and the
    photo height x width."""

    a: float
    b: float
    tx: float
    ty: float
    size: int
    height: int
    width: int

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray, height: int, width: int, size: int) -> "FaceCrop":
        """The least-squares similarity taking `TEMPLATE` (scaled to the crop) onto five photo landmarks (5, 2)."""
        p = TEMPLATE[:, 0] * size + 1j * TEMPLATE[:, 1] * size
        q = np.asarray(landmarks, np.float64)
        q = q[:, 0] + 1j * q[:, 1]
        pc, qc = p - p.mean(), q - q.mean()
        z = np.sum(np.conj(pc) * qc) / np.sum(np.abs(pc) ** 2)
        t = q.mean() - z * p.mean()
        return cls(float(z.real), float(z.imag), float(t.real), float(t.imag), int(size), int(height), int(width))

    @classmethod
    def whole_frame(cls, height: int, width: int, size: int) -> "FaceCrop":
        """The whole photo, centred in a square of its long side (edge pixels replicated beyond the photo)."""
        side = max(height, width)
        s = side / size
        return cls(s, 0.0, (width - side) / 2, (height - side) / 2, int(size), int(height), int(width))

    # ------------------------------------------------------------------------------------------ geometry
    @property
    def scale(self) -> float:
        """Photo pixels per crop pixel."""
        return float(np.hypot(self.a, self.b))

    def to_photo(self, uv: np.ndarray) -> np.ndarray:
        uv = np.asarray(uv, np.float64)
        return np.stack([self.a * uv[..., 0] - self.b * uv[..., 1] + self.tx,
                         self.b * uv[..., 0] + self.a * uv[..., 1] + self.ty], axis=-1)

    def to_crop(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, np.float64)
        x, y = xy[..., 0] - self.tx, xy[..., 1] - self.ty
        d = self.a ** 2 + self.b ** 2
        return np.stack([(self.a * x + self.b * y) / d, (-self.b * x + self.a * y) / d], axis=-1)

    def photo_box(self, u0: float = 0, v0: float = 0, u1: float | None = None, v1: float | None = None,
                  margin: float = 0.0, clip: bool = True) -> tuple[int, int, int, int]:
        """Integer photo box (x0, y0, x1, y1) covering the crop rectangle [u0, u1) x [v0, v1) plus `margin` photo
        pixels; clipped to the photo (may then be empty) unless clip=False."""
        u1 = self.size if u1 is None else u1
        v1 = self.size if v1 is None else v1
        c = self.to_photo(np.array([[u0, v0], [u1, v0], [u0, v1], [u1, v1]], np.float64))
        x0, y0 = np.floor(c.min(0) - margin).astype(int)
        x1, y1 = np.ceil(c.max(0) + margin).astype(int)
        if clip:
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(self.width, x1), min(self.height, y1)
        return int(x0), int(y0), int(x1), int(y1)

    def _affine_from(self, ox: float, oy: float, fx: float, fy: float) -> tuple[float, ...]:
        """PIL AFFINE coefficients: crop (u, v) -> coordinates of an image whose pixel (0, 0) starts at photo
        (ox, oy) with fx x fy photo pixels per pixel."""
        return ((self.a / fx), (-self.b / fx), (self.tx - ox) / fx, (self.b / fy), (self.a / fy), (self.ty - oy) / fy)

    # ------------------------------------------------------------------------------------------ photo -> crop
    def cut_plan(self) -> "CutPlan":
        """How the crop is cut (shared by the PIL path here and the device path, `ssae.face.device`): the photo
        region read, its box-reduced size, the edge padding at that size and the affine warp into the crop."""
        margin = 3 * max(1.0, self.scale)
        bx0, by0, bx1, by1 = self.photo_box(margin=margin, clip=False)
        rx0, ry0, rx1, ry1 = max(0, bx0), max(0, by0), min(self.width, bx1), min(self.height, by1)
        if rx1 <= rx0 or ry1 <= ry0:  # the crop lies wholly outside the photo: nearest edge pixels
            rx0, ry0 = min(max(0, bx0), self.width - 1), min(max(0, by0), self.height - 1)
            rx1, ry1 = rx0 + 1, ry0 + 1
        f = max(1.0, self.scale)  # reduce to about one pixel per crop pixel before the sub-pixel warp
        rw, rh = max(1, int(round((rx1 - rx0) / f))), max(1, int(round((ry1 - ry0) / f)))
        fx, fy = (rx1 - rx0) / rw, (ry1 - ry0) / rh
        pl = int(np.ceil(max(0, rx0 - bx0) / fx)) + 2
        pt = int(np.ceil(max(0, ry0 - by0) / fy)) + 2
        pr = int(np.ceil(max(0, bx1 - rx1) / fx)) + 2
        pb = int(np.ceil(max(0, by1 - ry1) / fy)) + 2
        return CutPlan((rx0, ry0, rx1, ry1), (rw, rh), (pl, pt, pr, pb),
                       self._affine_from(rx0 - pl * fx, ry0 - pt * fy, fx, fy))

    def _cut(self, photo: np.ndarray, channels_mode: str, pad_mode: str) -> Image.Image:
        s = self.size
        plan = self.cut_plan()
        rx0, ry0, rx1, ry1 = plan.region
        region = Image.fromarray(np.ascontiguousarray(photo[ry0:ry1, rx0:rx1]), channels_mode)
        rw, rh = plan.reduced
        # two one-axis passes in a fixed order, horizontal first (a two-axis resize lets Pillow pick the order: it
        # changed in Pillow 13, and the 8-bit rounding between the passes depends on it)
        if rw != region.width:
            region = region.resize((rw, region.height), Image.BOX)
        if rh != region.height:
            region = region.resize((rw, rh), Image.BOX)
        pl, pt, pr, pb = plan.pad  # pad (at the reduced size) to cover the whole crop
        arr = np.asarray(region)
        widths = ((pt, pb), (pl, pr)) + (((0, 0),) if arr.ndim == 3 else ())
        arr = np.pad(arr, widths, mode=pad_mode)
        padded = Image.fromarray(arr, channels_mode)
        resample = Image.BICUBIC if channels_mode == "RGB" else Image.BILINEAR
        return padded.transform((s, s), Image.AFFINE, plan.affine, resample=resample)

    def cut_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 photo (H, W, 3) -> uint8 crop (size, size, 3)."""
        return np.asarray(self._cut(rgb, "RGB", "edge"))

    def cut_mask(self, mask: np.ndarray) -> np.ndarray:
        """float photo mask (H, W) in [0, 1] -> float32 crop mask (size, size); zero beyond the photo."""
        return np.clip(np.asarray(self._cut(np.asarray(mask, np.float32), "F", "constant"), np.float32), 0.0, 1.0)

    # ------------------------------------------------------------------------------------------ crop -> photo
    def support_box(self, m: np.ndarray, grow: float = 1.0):
        """Photo box over the crop pixels where m > 0 (grown by `grow` crop pixels), or None when empty."""
        ys, xs = np.nonzero(m > 0)
        if len(ys) == 0:
            return None
        box = self.photo_box(xs.min() - grow, ys.min() - grow, xs.max() + 1 + grow, ys.max() + 1 + grow, margin=1)
        return box if box[2] > box[0] and box[3] > box[1] else None

    def _warp_back(self, im: Image.Image, box) -> np.ndarray:
        """A crop-size uint8 PIL image sampled (bilinear) at the photo pixels of `box`, zero outside the crop: an
        affine warp to about two photo pixels per crop pixel, then a separable bilinear enlargement by the rest
        (an integer factor k) when the photo is larger than that. uint8 array (box height, box width[, 3])."""
        x0, y0, x1, y1 = box
        bw, bh = x1 - x0, y1 - y0
        k = max(1, int(self.scale // 2))
        sw, sh = -(-bw // k), -(-bh // k)
        d = self.a ** 2 + self.b ** 2
        # (photo x0 + k X, y0 + k Y) -> crop (u, v) for the small image's continuous coordinates (X, Y)
        ia, ib = self.a / d, self.b / d
        cx, cy = x0 - self.tx, y0 - self.ty
        coeffs = (ia * k, ib * k, ia * cx + ib * cy, -ib * k, ia * k, -ib * cx + ia * cy)
        small = im.transform((sw, sh), Image.AFFINE, coeffs, resample=Image.BILINEAR)
        if k > 1:
            small = small.resize((sw * k, sh * k), Image.BILINEAR)
        return np.asarray(small)[:bh, :bw]

    def _warp_planes(self, planes, box) -> np.ndarray:
        """Up to four crop planes of 8-bit levels (uint8 (size, size) each) warped together as one 4-channel
        image ("RGBa": PIL interpolates each channel on its own, with no alpha premultiplication), so a plane's
        result does not depend on the others. uint8 (box height, box width, 4)."""
        stack = np.zeros((self.size, self.size, 4), np.uint8)
        for k, p in enumerate(planes):
            stack[..., k] = p
        return self._warp_back(Image.fromarray(stack, "RGBa"), box)

    def paste_mask(self, mask: np.ndarray) -> np.ndarray:
        """float crop mask (size, size) in [0, 1] -> float32 photo mask (H, W) (zero outside the crop; 8-bit
        levels, as the model's masks). The warp `paste_change` applies to its soft mask."""
        out = np.zeros((self.height, self.width), np.float32)
        box = self.support_box(mask)
        if box is not None:
            x0, y0, x1, y1 = box
            out[y0:y1, x0:x1] = self._warp_planes([_levels(mask)], box)[..., 0] * np.float32(1 / 255)
        return out

    def paste_change(self, rgb: np.ndarray, change: np.ndarray, soft: np.ndarray) -> np.ndarray:
        """The photo with a crop-resolution change added under a soft crop mask, at the photo's resolution:
        round(rgb + soft * change), clipped to [0, 255]. A new array; `change_patch` gives only the pixels that
        change."""
        out = rgb.copy()
        done = self.change_patch(rgb, change, soft)
        if done is not None:
            (x0, y0, x1, y1), patch = done
            out[y0:y1, x0:x1] = patch
        return out

    def change_patch(self, rgb: np.ndarray, change: np.ndarray, soft: np.ndarray):
        """The part of `paste_change`'s result that can differ from the photo: (box (x0, y0, x1, y1), uint8 pixels
        of the photo in that box with the change added), or None when the soft mask is empty.

        rgb: uint8 (H, W, 3) (only the box is read); change: float32 (size, size, 3) in 8-bit levels; soft: float32
        (size, size) in [0, 1]. Every photo pixel where the pasted soft mask (`paste_mask(soft)`) is 0 keeps the
        input's value, bit for bit. The change is warped as 8-bit codes on a per-edit scale (max |change| / 127: at
        most half a level of error for changes up to 127 levels), together with the soft mask: one warp."""
        box = self.support_box(soft)
        if box is None:
            return None
        x0, y0, x1, y1 = box
        scale = max(float(np.abs(change).max()) / 127.0, 1e-6)
        codes = np.clip(np.round(change / scale) + 128, 1, 255).astype(np.uint8)
        warped = self._warp_planes([codes[..., 0], codes[..., 1], codes[..., 2], _levels(soft)], box)
        w = warped[..., 3]
        patch = np.array(rgb[y0:y1, x0:x1])
        rows, cols = np.nonzero(w.any(axis=1))[0], np.nonzero(w.any(axis=0))[0]
        if not len(rows):
            return box, patch
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        d = warped[r0:r1, c0:c1, :3].astype(np.float32)
        d -= 128.0
        d *= w[r0:r1, c0:c1, None] * np.float32(scale / 255.0)
        sub = patch[r0:r1, c0:c1]
        d += sub                        # exactly the photo's value where the pasted mask is 0
        np.rint(d, out=d)
        np.clip(d, 0, 255, out=d)
        sub[...] = d
        return box, patch


@dataclass(frozen=True)
class CutPlan:
    """The cut of one crop (`FaceCrop.cut_plan`): read the photo's `region` (x0, y0, x1, y1), box-reduce it to
    `reduced` (width, height), pad it by `pad` (left, top, right, bottom) pixels at that size, then sample the crop
    pixel (u, v) at padded-image coordinates (a u' + b v' + c, d u' + e v' + f) with (u', v') = (u + 0.5, v + 0.5)
    and `affine` = (a, b, c, d, e, f) (PIL's AFFINE convention: pixel (i, j) covers [j, j+1) x [i, i+1))."""

    region: tuple[int, int, int, int]
    reduced: tuple[int, int]
    pad: tuple[int, int, int, int]
    affine: tuple[float, ...]


def _levels(m: np.ndarray) -> np.ndarray:
    """A [0, 1] float plane in 8-bit levels."""
    return np.round(np.clip(m, 0, 1) * 255).astype(np.uint8)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian taps (float32, 2r + 1 of them, r = ceil(3 sigma)) of `gaussian_blur`."""
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(a: np.ndarray, sigma: float, mode: str = "constant") -> np.ndarray:
    """Separable Gaussian blur (sigma in pixels, 3 sigma support) of a 2-D float array; beyond its edges the
    array is padded with `mode` (numpy.pad: "constant" for zeros, "edge" to replicate)."""
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    p = np.pad(a, ((r, r), (0, 0)), mode=mode)
    out = sum(k[i] * p[i: i + a.shape[0]] for i in range(2 * r + 1))
    p = np.pad(out, ((0, 0), (r, r)), mode=mode)
    return sum(k[j] * p[:, j: j + a.shape[1]] for j in range(2 * r + 1))


def feather(mask: np.ndarray, radius: float) -> np.ndarray:
    """A soft crop mask for compositing: the mask, blurred by a Gaussian of `radius` crop pixels, never below the
    mask itself (so the region is fully edited) and exactly 0 where the blur is below half an 8-bit level."""
    m = np.clip(np.asarray(mask, np.float32), 0, 1)
    if radius <= 0:
        return m
    soft = np.maximum(gaussian_blur(m, radius), m)
    soft[soft < 0.5 / 255] = 0.0
    return soft
