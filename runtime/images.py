"""Image input for the runtime: paths, PIL images or arrays, in any common mode, checked with clear errors.

Size limits are checked from the file's header, before any pixel is decoded (`ImageLimits`): a small file that
declares a huge or absurdly long image (a decompression bomb, a 1 x 40000 strip) is refused in one line without
allocating its pixels."""
from __future__ import annotations

import io
from struct import error as struct_error
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ssae.errors import SSAEError

class ImageError(SSAEError, ValueError):
    """The input is not a usable image (one-line message naming the problem)."""


@dataclass(frozen=True)
class ImageLimits:
    """The largest image accepted: `max_pixels` in all and `max_side` pixels on either side (defaults: 40 Mpx,
    16384 px; a 40 Mpx RGB photo decodes to 120 MB)."""

    max_pixels: int = 40_000_000
    max_side: int = 16384

    def check(self, width: int, height: int, name: str) -> None:
        if width <= 0 or height <= 0:
            raise ImageError(f"{name} has no pixels ({width} x {height})")
        if width * height > self.max_pixels or max(width, height) > self.max_side:
            raise ImageError(f"{name} is {width} x {height} px: over the limit of {self.max_pixels / 1e6:g} Mpx "
                             f"and {self.max_side} px a side")


DEFAULT_LIMITS = ImageLimits()


def _from_pil(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16/32-bit greyscale: scale to 8 bits
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        g = np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(im).astype(np.float64)
        a = a / 255.0 if a.max() > 1.0 else a
        g = np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent pixels become white
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def _from_array(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"array of shape {a.shape} is not an image (expected H x W, H x W x 3 or H x W x 4)")
    if a.dtype == np.uint16:
        a = np.round(a.astype(np.float64) / 65535.0 * 255.0).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageError("array image contains NaN or infinite values")
        a = np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ImageError(f"unsupported array dtype {a.dtype} (use uint8, uint16 or float in [0, 1])")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        alpha = a[..., 3:4].astype(np.float32) / 255.0
        a = np.round(a[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(a)


def load_image(src, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Any supported input -> uint8 RGB array (H, W, 3). Raises ImageError with a one-line reason (including
    images over `limits`, checked before decoding)."""
    if isinstance(src, np.ndarray):
        if src.ndim >= 2:
            limits.check(src.shape[1], src.shape[0], "array image")
        return _from_array(src)
    if isinstance(src, Image.Image):
        limits.check(src.width, src.height, "image")
        return _from_pil(src)
    if isinstance(src, (bytes, bytearray)):
        data, name = bytes(src), "image bytes"
    elif isinstance(src, (str, os.PathLike)):
        p = Path(src)
        if not p.exists():
            raise ImageError(f"image file not found: {p}")
        if p.is_dir():
            raise ImageError(f"{p} is a folder, not an image file")
        data, name = p.read_bytes(), str(p)
    else:
        raise ImageError(f"unsupported image input of type {type(src).__name__}")
    if not data:
        raise ImageError(f"{name} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                limits.check(im.width, im.height, name)   # from the header: nothing decoded yet
                im.load()
                return _from_pil(im)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image (unrecognised file type)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name} is too large to decode ({str(e).split('.')[0]})") from None
    except MemoryError:
        raise ImageError(f"{name} needs more memory to decode than this machine has") from None
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, struct_error, EOFError) as e:
        raise ImageError(f"{name} is a corrupt or truncated image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
