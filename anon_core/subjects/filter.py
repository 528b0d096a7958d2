"""Subject-level redaction as a post-detection filter on face Detections.

`SubjectFilter.apply(frames, dets)` runs after the detectors and before tracking/masking: in
`redact_only` mode it drops every face that does not match a reference (so only the subject is
masked); in `keep` mode it drops the faces that match (the subject stays visible, everyone else is
masked). Other classes (plates, persons, text) pass untouched. In video the tracker then carries the
remaining faces through frames where a decision was missed. Embeddings live only in this object.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np

from anon_core.detections import Detections
from anon_core.subjects.embedder import FaceEmbedder, nearest_reference, sharpness
from anon_core.subjects.settings import SubjectSettings

log = logging.getLogger(__name__)


class SubjectError(ValueError):
    pass


def load_references(paths: Sequence[str], detect, embedder: FaceEmbedder, label: str = "face",
                    max_pixels: int = 50_000_000) -> np.ndarray:
    """(R, 128) embeddings of the largest face in each reference photo; `detect(rgb)` -> Detections."""
    from anon_core.media import image_io
    from anon_core.media.probe import sniff

    out = []
    for p in paths:
        try:
            with open(p, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise SubjectError(f"cannot read reference photo {p}: {exc.strerror}") from exc
        media = sniff(data[:64])
        if media.kind != "image":
            raise SubjectError(f"reference {p} is not an image")
        rgb = image_io.decode(data, media.format, max_pixels, 30_000).rgb
        d = detect(rgb)
        if len(d):
            d = d[d.labels.astype(str) == label]
        if not len(d):
            raise SubjectError(f"no face found in reference photo {p}")
        big = int(np.argmax(d.wh[:, 0] * d.wh[:, 1]))
        e = embedder.embed(rgb, d.xyxy[big:big + 1])
        if not np.isfinite(e).all():
            raise SubjectError(f"the face in reference photo {p} is too small")
        out.append(e[0])
    return np.stack(out)


class SubjectFilter:
    def __init__(self, settings: SubjectSettings, references: np.ndarray) -> None:
        self.settings = settings
        self.refs = references
        self.threshold = float(settings.threshold)
        self.people = reference_people(references, self.threshold)
        self._local = threading.local()  # one embedder per thread (video analyses in its own thread)

    @classmethod
    def build(cls, settings: SubjectSettings, detect) -> SubjectFilter:
        emb = FaceEmbedder()
        f = cls(settings, load_references(settings.references, detect, emb, settings.label))
        f._local.embedder = emb
        return f

    def embedder(self) -> FaceEmbedder:
        e = getattr(self._local, "embedder", None)
        if e is None:
            e = self._local.embedder = FaceEmbedder()
        return e

    def match(self, rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(matches, distances) of these face boxes against the references."""
        d, _ = self.nearest(rgb, boxes)
        return d <= self.threshold, d

    def nearest(self, rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distance to the nearest reference, that reference's person) per face box."""
        d, ref = nearest_reference(self.embedder().embed(rgb, boxes), self.refs)
        return d, np.where(ref >= 0, self.people[np.maximum(ref, 0)], -1)

    def apply(self, frames: Sequence[np.ndarray], dets: list[Detections]) -> list[Detections]:
        """Frame by frame, without track evidence (the residual check's second detector)."""
        return [self.session().select(rgb, d) for rgb, d in zip(frames, dets)]

    def session(self) -> SubjectSession:
        return SubjectSession(self)

    def report(self) -> dict:
        s = self.settings
        out = {"mode": s.mode, "references": len(self.refs), "threshold": self.threshold}
        if s.mode == "keep":
            out.update(people=int(self.people.max()) + 1 if len(self.people) else 0,
                       keep_exclusive=bool(s.keep_exclusive), keep_threshold=float(s.keep_threshold),
                       keep_min_face_px=float(s.keep_min_face_px),
                       keep_min_sharpness=float(s.keep_min_sharpness))
        return out


def reference_people(refs: np.ndarray, threshold: float) -> np.ndarray:
    """Person id per reference photo: photos within `threshold` of each other (transitively) are one person."""
    from scipy.sparse.csgraph import connected_components

    if len(refs) < 2:
        return np.arange(len(refs))
    close = np.linalg.norm(refs[:, None, :] - refs[None, :, :], axis=-1) <= threshold
    return connected_components(close, directed=False)[1]


class SubjectSession:
    """One asset's decisions: in video a face's verdict follows its track's evidence so far.

    A single frame's embedding of a small, blurred or turned face is noisy (per-frame false non-match
    2.7 % at the calibrated threshold on face_video); the running mean over the track's frames removes
    almost all of those errors (benchmarks/subjects.py). Faces too small to embed, with no track
    evidence yet, count as undecided and are masked in both modes (fail closed).

    `keep` is the mode where a false match is a privacy failure (a stranger left visible), and same-session
    bystanders (crowds, audiences) are the hard impostors: there a face may only be the subject when it is
    at least `keep_min_face_px` and `keep_min_sharpness` (other faces neither count as evidence nor stay
    visible: small and blurred faces drift towards the average face, where strangers match) and the running
    mean of its track's such faces is within `keep_threshold`, stricter than `threshold`
    (benchmarks/subjects_keep.py). The mean is re-checked on every frame, so a track whose later faces
    disagree is masked again. With `keep_exclusive` a person is in a frame once: of the frame's faces whose
    tracks have evidence for the same reference person, only the nearest may stay visible, so a lookalike in the
    subject's crowd stays masked while the subject is in the picture.
    """

    def __init__(self, f: SubjectFilter) -> None:
        self.filter = f
        s = f.settings
        self.keep = s.mode == "keep"
        self.limit = float(s.keep_threshold) if self.keep else f.threshold
        self.min_px = float(s.keep_min_face_px) if self.keep else 0.0
        self.min_sharp = float(s.keep_min_sharpness) if self.keep else 0.0
        self.exclusive = self.keep and bool(s.keep_exclusive)
        self.tracks: dict[int, list] = {}  # track id -> [sum of distances, frames of evidence, person]
        self.masked = self.visible = self.undecided = 0

    def verdicts(self, rgb: np.ndarray, boxes: np.ndarray, track_ids: np.ndarray | None) -> np.ndarray:
        """Per face: 1 subject, 0 not the subject, -1 undecided."""
        dist, person = self.filter.nearest(rgb, boxes)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        good = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= self.min_px
        if self.min_sharp > 0:
            good &= np.array([sharpness(rgb, b) >= self.min_sharp if ok else False for b, ok in zip(boxes, good)], bool)
        tids = track_ids if track_ids is not None else np.full(len(boxes), -1)
        out = np.full(len(boxes), -1, np.int8)
        means = np.full(len(boxes), np.inf)
        who = np.full(len(boxes), -1)
        for i, (tid, d) in enumerate(zip(tids, dist)):
            tid = int(tid)
            usable = bool(np.isfinite(d) and good[i])
            if tid >= 0:
                st = self.tracks.setdefault(tid, [0.0, 0, -1])
                if usable:
                    st[0] += float(d)
                    st[1] += 1
                    st[2] = int(person[i])
                mean, who[i] = (st[0] / st[1] if st[1] else np.inf), st[2]
            else:  # a still image (or a frame checked alone): this face is all the evidence there is
                mean, who[i] = (float(d) if usable else np.inf), (int(person[i]) if usable else -1)
            means[i] = mean
            if self.keep and not good[i]:
                out[i] = 0  # too small or blurred to be sure of anyone: never left visible
            elif np.isfinite(mean):
                out[i] = 1 if mean <= self.limit else 0
        if self.exclusive:
            for p in np.unique(who[np.isfinite(means) & (who >= 0)]):
                rivals = np.flatnonzero((who == p) & np.isfinite(means))
                best = rivals[np.argmin(means[rivals])]
                out[rivals[(rivals != best) & (out[rivals] == 1)]] = 0  # a second face of one person: masked
        return out

    def select(self, rgb: np.ndarray, dets: Detections) -> Detections:
        """The detections to mask in this frame."""
        if not len(dets):
            return dets
        label = self.filter.settings.label
        faces = dets.labels.astype(str) == label
        if not faces.any():
            return dets
        tids = dets.track_ids[faces] if dets.track_ids is not None else None
        v = self.verdicts(rgb, dets.xyxy[faces], tids)
        subject_masked = self.filter.settings.mode == "redact_only"
        mask_face = (v == -1) | ((v == 1) == subject_masked)
        keep = np.ones(len(dets), bool)
        keep[np.flatnonzero(faces)] = mask_face
        self.masked += int(mask_face.sum())
        self.visible += int((~mask_face).sum())
        self.undecided += int((v == -1).sum())
        return dets[keep]

    def report(self) -> dict:
        return {**self.filter.report(), "faces_masked": self.masked, "faces_left_visible": self.visible,
                "faces_undecided": self.undecided, "tracks": len(self.tracks)}
