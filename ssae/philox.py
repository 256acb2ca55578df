"""Counter-based Gaussian noise (Philox4x32-10 + Box-Muller), identical on every backend.

The SSAE runtime never draws edit noise from a framework's global RNG: every noise value is a pure function of
(seed, stream, index), so the same seed gives the same edit on torch, ONNX Runtime, OpenVINO, TensorRT and the
CUDA kernel (`masked_modconv.cu` implements the same generator on the device).

Layout (the contract the CUDA kernel follows):
- key = (seed & 0xFFFFFFFF, seed >> 32); counter = (j // 4, 0, stream, 0) for the j-th value of a stream.
- The 4 output words give two Box-Muller pairs: (w0, w1) -> values 4q, 4q+1 (r cos t, r sin t), (w2, w3) -> 4q+2, 4q+3.
- u = (w + 0.5) / 2^32 in float64 (never 0 or 1); r = sqrt(-2 ln u_a), t = 2 pi u_b; computed in float64, then
  rounded to float32. The uint32 words are bit-exact everywhere; the float32 normals agree bit for bit wherever
  float64 log/sin/cos are faithfully rounded (numpy and CUDA's double-precision functions both are).
"""
from __future__ import annotations

import numpy as np

PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint32(0x9E3779B9)
PHILOX_W1 = np.uint32(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)

# Streams: which noise a value belongs to.
STREAM_REGION = 1       # region mode: one N(0, I) texture-code direction per edit (global_code_ch values)
STREAM_PIXEL = 32       # pixel mode: per-pixel N(0, I_Cin) at an injection layer, HWC order (+ layer index)
STREAM_INJECTION = 64   # per-pixel noise-injection maps xi of the generator's StyledConvs (+ layer index)


def philox4x32(counter: np.ndarray, key: tuple[int, int] | np.ndarray, rounds: int = 10) -> np.ndarray:
    """Philox4x32 on an (..., 4) uint32 counter array with a 2 x uint32 key. Returns (..., 4) uint32."""
    c = np.asarray(counter, dtype=np.uint32)
    c0, c1, c2, c3 = (c[..., i].astype(np.uint64) for i in range(4))
    k0 = np.uint32(int(key[0]) & 0xFFFFFFFF)
    k1 = np.uint32(int(key[1]) & 0xFFFFFFFF)
    with np.errstate(over="ignore"):
        for r in range(rounds):
            p0 = PHILOX_M0 * c0
            p1 = PHILOX_M1 * c2
            hi0, lo0 = p0 >> np.uint64(32), p0 & _MASK32
            hi1, lo1 = p1 >> np.uint64(32), p1 & _MASK32
            c0 = hi1 ^ c1 ^ np.uint64(k0)
            c1 = lo1
            c2 = hi0 ^ c3 ^ np.uint64(k1)
            c3 = lo0
            if r < rounds - 1:
                k0 = np.uint32((int(k0) + int(PHILOX_W0)) & 0xFFFFFFFF)
                k1 = np.uint32((int(k1) + int(PHILOX_W1)) & 0xFFFFFFFF)
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def _check_seed(seed: int) -> int:
    seed = int(seed)
    if not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
    return seed


def _normals(seed: int, stream: int, blocks: np.ndarray) -> np.ndarray:
    """The 4 float32 normals of each Philox block index: (len(blocks), 4)."""
    seed = _check_seed(seed)
    ctr = np.zeros((len(blocks), 4), dtype=np.uint32)
    ctr[:, 0] = blocks.astype(np.uint64).astype(np.uint32)
    ctr[:, 2] = np.uint32(stream)
    words = philox4x32(ctr, (seed & 0xFFFFFFFF, seed >> 32)).astype(np.float64)
    u = (words + 0.5) * (1.0 / 4294967296.0)
    r0 = np.sqrt(-2.0 * np.log(u[:, 0]))
    t0 = 2.0 * np.pi * u[:, 1]
    r1 = np.sqrt(-2.0 * np.log(u[:, 2]))
    t1 = 2.0 * np.pi * u[:, 3]
    return np.stack([r0 * np.cos(t0), r0 * np.sin(t0), r1 * np.cos(t1), r1 * np.sin(t1)], axis=-1).astype(np.float32)


def gaussian(seed: int, stream: int, n: int) -> np.ndarray:
    """The first `n` float32 N(0, 1) values of (seed, stream)."""
    return _normals(seed, stream, np.arange((n + 3) // 4)).reshape(-1)[:n]


def gaussian_at(seed: int, stream: int, index: np.ndarray) -> np.ndarray:
    """The values of (seed, stream) at arbitrary indices (same numbers as `gaussian`, without the rest)."""
    index = np.asarray(index, dtype=np.int64)
    blocks, inv = np.unique(index // 4, return_inverse=True)
    return _normals(seed, stream, blocks)[inv.reshape(index.shape), index % 4]


def pixel_window(seeds, stream: int, full_hw: tuple[int, int], window: tuple[int, int, int, int], channels: int):
    """Pixel-mode noise z of a (y0, y1, x0, x1) window of a full (H, W, C) HWC-ordered stream: (B, h, w, C)."""
    y0, y1, x0, x1 = window
    ys, xs, cs = np.meshgrid(np.arange(y0, y1), np.arange(x0, x1), np.arange(channels), indexing="ij")
    idx = (ys * full_hw[1] + xs) * channels + cs
    return np.stack([gaussian_at(s, stream, idx) for s in seeds])


def gaussian_batch(seeds, stream: int, shape: tuple[int, ...]) -> np.ndarray:
    """One float32 N(0, 1) array of `shape` per seed: (len(seeds), *shape), C order."""
    n = int(np.prod(shape)) if shape else 1
    return np.stack([gaussian(s, stream, n).reshape(shape) for s in seeds])


def region_noise(seeds, dim: int) -> np.ndarray:
    """The texture-code directions n of region edits, one per seed: (len(seeds), dim) float32."""
    return gaussian_batch(seeds, STREAM_REGION, (dim,))


def injection_map(seed: int, layer_index: int, h: int, w: int) -> np.ndarray:
    """The noise-injection map xi of StyledConv `layer_index` for the model's noise seed: (1, 1, h, w) float32."""
    return gaussian(seed, STREAM_INJECTION + int(layer_index), h * w).reshape(1, 1, h, w)


def tail_noise_map(facts: dict) -> np.ndarray:
    """The edit graphs' `xi` input for the full image: the generator's tail noise map, from an export manifest or
    `export.stages.model_facts` (noise_seed, tail_noise_index, model_config.image_size)."""
    s = int(facts["model_config"]["image_size"])
    return injection_map(facts.get("noise_seed", 0), facts["tail_noise_index"], s, s)
