"""Nose, eyes and lips+mouth masks derived from facial landmarks (for LFW, which labels only hair and skin).

How the masks are made: MediaPipe Face Mesh (mediapipe 0.10.21, its model ships inside the PyPI wheel and runs
offline; `pip install ssae[labels]`) gives 468 (478 with iris refinement) landmarks per face in static-image mode.
Each ROI is a filled polygon at the image's resolution:
- lips: the outer lip contour (lips and the mouth opening between them);
- eyes: the two eyelid contours (the visible eyeball; eyebrows excluded), as CelebAMask-HQ's l_eye/r_eye;
- nose: the convex hull of the nose landmarks from the bridge between the eyes to the nostrils and alae.
Images where no face is found get no derived masks (their nose/eyes/lips count as unlabelled in training and are
left out of the evaluation). `ssae data lfw-masks` writes `OUT/<roi>/NAME.png` (0/255) and `OUT/manifest.json`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw

LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
NOSE = (168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 97, 326, 327, 64, 294, 48, 278, 49, 279, 129, 358, 102, 331,
        209, 429, 198, 420, 131, 360, 115, 344, 220, 440, 45, 275, 122, 351, 188, 412, 174, 399, 236, 456)
DERIVED_ROIS = ("nose", "eyes", "lips")


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain; points (N, 2) -> hull vertices in order."""
    pts = sorted(map(tuple, points.tolist()))
    if len(pts) <= 2:
        return np.asarray(pts)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.asarray(lower[:-1] + upper[:-1])


def _fill(polygons: Iterable[np.ndarray], height: int, width: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        draw.polygon([tuple(map(float, p)) for p in poly], fill=255, outline=255)
    return np.asarray(canvas) > 0


def masks_from_landmarks(landmarks: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    """landmarks: (N >= 468, 2) pixel coordinates (x, y) -> boolean masks for nose, eyes and lips."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[0] < 468 or lm.shape[1] < 2:
        raise ValueError(f"expected Face Mesh landmarks (>= 468, 2), got {lm.shape}")
    lm = lm[:, :2]
    return {
        "lips": _fill([lm[list(LIPS_OUTER)]], height, width),
        "eyes": _fill([lm[list(LEFT_EYE)], lm[list(RIGHT_EYE)]], height, width),
        "nose": _fill([convex_hull(lm[list(NOSE)])], height, width),
    }


class FaceMeshLandmarker:
    """MediaPipe Face Mesh in static-image mode (import-guarded: needs the `labels` extra)."""

    def __init__(self, min_confidence: float = 0.3):
        try:
            import mediapipe as mp
        except ImportError as e:
            raise RuntimeError("deriving landmark masks needs mediapipe: pip install 'ssae[labels]' "
                               "(mediapipe 0.10.21, numpy<2)") from e
        self.version = mp.__version__
        self._mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                                                     min_detection_confidence=min_confidence)

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        """uint8 (H, W, 3) -> (478, 2) pixel coordinates, or None if no face is found."""
        res = self._mesh.process(np.ascontiguousarray(rgb))
        if not res.multi_face_landmarks:
            return None
        h, w = rgb.shape[:2]
        return np.array([(p.x * w, p.y * h) for p in res.multi_face_landmarks[0].landmark])


def derive_lfw_masks(lfw_root: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False,
                     progress=None) -> dict:
    """Write nose/eyes/lips masks for every image of an LFW Part Labels folder. Returns the manifest."""
    from ..fileio import atomic_write
    from .layouts import read_rgb

    lfw_root, out_dir = Path(lfw_root), Path(out_dir)
    names = sorted(p.stem for p in (lfw_root / "images").glob("*.jpg"))
    if not names:
        raise FileNotFoundError(f"no images in {lfw_root / 'images'}")
    for roi in DERIVED_ROIS:
        (out_dir / roi).mkdir(parents=True, exist_ok=True)
    mesh = FaceMeshLandmarker()
    failed, written = [], 0
    for k, name in enumerate(names):
        if progress:
            progress(k, len(names))
        if not overwrite and all((out_dir / roi / f"{name}.png").exists() for roi in DERIVED_ROIS):
            continue
        img = read_rgb(lfw_root / "images" / f"{name}.jpg")
        lm = mesh(img)
        if lm is None:
            failed.append(name)
            continue
        for roi, m in masks_from_landmarks(lm, *img.shape[:2]).items():
            atomic_write(out_dir / roi / f"{name}.png",
                         lambda tmp, m=m: Image.fromarray((m * 255).astype(np.uint8)).save(tmp, format="PNG"))
        written += 1
    manifest = {"source": str(lfw_root), "method": "mediapipe Face Mesh polygons (ssae.data.landmarks)",
                "mediapipe": mesh.version, "images": len(names), "written": written, "no_face": failed}
    atomic_write(out_dir / "manifest.json", lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
    return manifest
