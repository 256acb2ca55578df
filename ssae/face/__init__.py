"""Finding the face in a photo and framing it for the model (`detector`: MTCNN on ONNX Runtime; `framing`: the
similarity crop and the paste back). Training data and edits go through the same `frame_faces`."""
from __future__ import annotations

import numpy as np

from .detector import DetectorConfig, Face, FaceDetector, shared_detector
from .framing import TEMPLATE, FaceCrop, feather

#: Bump when the framing of training data changes (decoded-dataset caches are keyed by it).
FRAMING_REVISION = 3


def frame_faces(rgb: np.ndarray, size: int, detector: FaceDetector | None = None) -> list[FaceCrop]:
    """One `FaceCrop` per detected face of an RGB photo, largest face first (empty when none is found)."""
    det = detector or shared_detector()
    h, w = rgb.shape[:2]
    return [FaceCrop.from_landmarks(f.landmarks, h, w, size) for f in det.detect(rgb)]


def frame_training_image(rgb: np.ndarray, size: int) -> FaceCrop:
    """The crop a training image is cut with: its largest face, or the whole frame when no face is found."""
    crops = frame_faces(rgb, size)
    return crops[0] if crops else FaceCrop.whole_frame(rgb.shape[0], rgb.shape[1], size)


__all__ = ["DetectorConfig", "Face", "FaceDetector", "FaceCrop", "TEMPLATE", "FRAMING_REVISION", "feather",
           "frame_faces", "frame_training_image", "shared_detector"]
