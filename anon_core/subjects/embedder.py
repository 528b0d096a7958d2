"""Face embeddings: dlib's 128-d ResNet (face_recognition_models, CC0) run by dlib (dlib-bin, Boost).

The face boxes come from anon's own detectors; dlib's 5-point shape predictor places the landmarks
inside each box and `compute_face_descriptor` aligns a 150x150 chip and embeds it. A face smaller than
`UPSAMPLE_TO` px is first cut out with its surroundings and enlarged (bicubic) so that the predictor sees it
at that size: on 34-px TV faces its landmarks are placed better there, which moves the subject's own faces
closer to the references and strangers no closer (benchmarks/subjects_keep.py, RESULTS.md). Distances are
Euclidean; the model was trained so that one person's faces lie within about 0.6 of each other.
Weights are read from the installed package only (nothing downloads).
"""

from __future__ import annotations

import hashlib
import os
import threading
from functools import lru_cache

import numpy as np

MODEL = "dlib_face_recognition_resnet_model_v1"
PREDICTOR = "shape_predictor_5_face_landmarks"
UPSAMPLE_TO = 150.0  # px, shorter side; 0: embed every face at its own size
UPSAMPLE_CONTEXT = 0.6  # margin kept around an enlarged face, as a share of its larger side


def model_dir() -> str:
    # located, not imported: the package's __init__ needs pkg_resources, which new setuptools no longer has
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("subject matching needs the `subjects` extra: dlib-bin and face-recognition-models")
    return os.path.join(list(spec.submodule_search_locations)[0], "models")


@lru_cache(maxsize=1)
def weights_sha256() -> str:
    with open(os.path.join(model_dir(), MODEL + ".dat"), "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


class FaceEmbedder:
    """embed(rgb, boxes) -> (N, 128) float32; one instance per thread (dlib objects are not shared)."""

    def __init__(self, upsample_to: float = UPSAMPLE_TO) -> None:
        import dlib

        self.upsample_to = float(upsample_to)
        d = model_dir()
        self._dlib = dlib
        self._sp = dlib.shape_predictor(os.path.join(d, PREDICTOR + ".dat"))
        self._net = dlib.face_recognition_model_v1(os.path.join(d, MODEL + ".dat"))
        self._lock = threading.Lock()

    def model_info(self):
        from anon_core.weights import ModelInfo

        return ModelInfo(MODEL, "dlib-models v1 (face_recognition_models 0.3.0)", weights_sha256(),
                         "pkg://face_recognition_models/models/" + MODEL + ".dat", "CC0-1.0")

    def embed(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        if not len(boxes):
            return np.zeros((0, 128), np.float32)
        img = np.ascontiguousarray(rgb, dtype=np.uint8)
        h, w = img.shape[:2]
        out = np.zeros((len(boxes), 128), np.float32)
        with self._lock:
            for i, b in enumerate(np.asarray(boxes, np.float64)):
                x1, y1, x2, y2 = pixel_rect(b, w, h)
                if x2 - x1 < 4 or y2 - y1 < 4:
                    out[i] = np.nan  # too small to say anything: never a match
                    continue
                small = min(b[2] - b[0], b[3] - b[1]) < self.upsample_to
                src, box = enlarged_face(img, b, self.upsample_to) if small else (img, b)
                shape = self._sp(src, self._dlib.rectangle(*pixel_rect(box, src.shape[1], src.shape[0])))
                out[i] = np.asarray(self._net.compute_face_descriptor(src, shape, 0, 0.25), np.float32)
        return out


def pixel_rect(b, w: int, h: int) -> tuple[int, int, int, int]:
    """The box as whole pixels inside a w x h image (outwards, clipped)."""
    return (int(max(0, np.floor(b[0]))), int(max(0, np.floor(b[1]))),
            int(min(w - 1, np.ceil(b[2]))), int(min(h - 1, np.ceil(b[3]))))


def enlarged_face(img: np.ndarray, b: np.ndarray, upsample_to: float) -> tuple[np.ndarray, np.ndarray]:
    """The face with its surroundings, scaled so that its shorter side is `upsample_to`, and its box there."""
    import cv2

    h, w = img.shape[:2]
    m = UPSAMPLE_CONTEXT * max(b[2] - b[0], b[3] - b[1])
    cx1, cy1 = int(max(0, b[0] - m)), int(max(0, b[1] - m))
    cx2, cy2 = int(min(w, b[2] + m)), int(min(h, b[3] + m))
    # a thin box (not a face's shape) must not blow the crop up: at most 4x upsample_to on its long side
    scale = min(upsample_to / max(1.0, min(b[2] - b[0], b[3] - b[1])), 4 * upsample_to / max(1, cx2 - cx1, cy2 - cy1))
    size = (max(1, int(round((cx2 - cx1) * scale))), max(1, int(round((cy2 - cy1) * scale))))
    crop = cv2.resize(img[cy1:cy2, cx1:cx2], size, interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(crop), (np.asarray(b, np.float64) - np.array([cx1, cy1, cx1, cy1])) * scale


def sharpness(rgb: np.ndarray, box) -> float:
    """Variance of the Laplacian of the face crop resized to 64x64: a blur measure that does not grow with size.

    keep mode leaves no face visible below `subjects.keep_min_sharpness`: a blurred face's embedding drifts
    towards the average face, where strangers match too (benchmarks/subjects_keep.py).
    """
    import cv2

    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    crop = rgb[max(0, y1):max(y1 + 1, y2), max(0, x1):max(x1 + 1, x2)]
    if not crop.size:
        return 0.0
    g = cv2.cvtColor(cv2.resize(np.ascontiguousarray(crop), (64, 64), interpolation=cv2.INTER_AREA),
                     cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(g, cv2.CV_64F).var())


def distances(emb: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """(N,) smallest Euclidean distance of each embedding to any reference (inf for unusable faces)."""
    return nearest_reference(emb, refs)[0]


def nearest_reference(emb: np.ndarray, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) smallest Euclidean distance to any reference (inf for unusable faces) and its index (-1 there)."""
    if not len(emb) or not len(refs):
        return np.full(len(emb), np.inf, np.float32), np.full(len(emb), -1, np.int64)
    d = np.linalg.norm(emb[:, None, :] - refs[None, :, :], axis=-1)
    ok = np.isfinite(d).all(axis=1)
    idx = np.where(ok, np.argmin(np.where(np.isfinite(d), d, np.inf), axis=1), -1)
    best = np.where(ok, d[np.arange(len(d)), np.maximum(idx, 0)], np.inf)
    return best.astype(np.float32), idx.astype(np.int64)
