"""Image input for the runtime: paths, PIL images or arrays, in any common mode, checked with clear errors."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

class ImageError(ValueError):
    """The input is not a usable image (one-line message naming the problem)."""


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


def load_image(src) -> np.ndarray:
    """Any supported input -> uint8 RGB array (H, W, 3). Raises ImageError with a one-line reason."""
    if isinstance(src, np.ndarray):
        return _from_array(src)
    if isinstance(src, Image.Image):
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
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return _from_pil(im)
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image (unrecognised file type)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name} is a corrupt or truncated image ({e})") from None
