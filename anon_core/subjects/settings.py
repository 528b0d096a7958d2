"""`subjects.*` configuration: redact or keep only the faces of named people (reference photos)."""

from __future__ import annotations

from dataclasses import dataclass, field

# Calibrated on ../shared/data/face_video by 5-fold cross-validation (benchmarks/subjects.py, RESULTS.md).
DEFAULT_THRESHOLD = 0.59
# keep mode (a false match leaves a stranger visible), chosen by leave-one-clip-out CV against bystanders
# (benchmarks/subjects_keep.py, RESULTS.md "subjects.keep against bystanders")
KEEP_THRESHOLD = 0.53
KEEP_MIN_FACE_PX = 24.0
KEEP_MIN_SHARPNESS = 80.0
KEEP_EXCLUSIVE = False  # opt-in: masks look-alikes in the subject's own frames, at a cost to the subject


@dataclass
class SubjectSettings:
    """redact_only: mask only the faces that match one of these reference photos (every other face stays).
    keep: leave the faces that match these photos visible and mask every other face.
    threshold: largest embedding distance that counts as the same person (dlib ResNet, Euclidean).
    keep_threshold, keep_min_face_px, keep_min_sharpness: what `keep` needs before it leaves a face visible:
    the face's shorter side >= keep_min_face_px px and its sharpness (embedder.sharpness) >= keep_min_sharpness,
    and the running mean distance of the track's faces that pass both within keep_threshold (stricter than
    threshold: there a false match leaves a stranger visible). Faces that fail are masked in keep mode.
    keep_exclusive: one person appears in a frame once: of a frame's faces nearest to the same reference person,
    only the one whose track is nearest to the references may stay visible (reference photos within
    `threshold` of each other are one person).
    Only one of redact_only / keep may be set. Reference photos must each show one clear face (the largest
    face found is used). Embeddings stay in memory: they are never written to the audit or logs.
    """

    redact_only: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    threshold: float = DEFAULT_THRESHOLD
    keep_threshold: float = KEEP_THRESHOLD
    keep_min_face_px: float = KEEP_MIN_FACE_PX
    keep_min_sharpness: float = KEEP_MIN_SHARPNESS
    keep_exclusive: bool = KEEP_EXCLUSIVE
    label: str = "face"

    def __post_init__(self) -> None:
        self.redact_only = [str(p) for p in (self.redact_only or [])]
        self.keep = [str(p) for p in (self.keep or [])]
        if self.redact_only and self.keep:
            raise ValueError("subjects.redact_only and subjects.keep cannot both be set")
        if not 0.0 < float(self.threshold) < 2.0:
            raise ValueError("subjects.threshold must be in (0, 2)")
        if not 0.0 < float(self.keep_threshold) < 2.0:
            raise ValueError("subjects.keep_threshold must be in (0, 2)")
        if float(self.keep_min_face_px) < 0 or float(self.keep_min_sharpness) < 0:
            raise ValueError("subjects.keep_min_face_px and subjects.keep_min_sharpness must be >= 0")

    @property
    def enabled(self) -> bool:
        return bool(self.redact_only or self.keep)

    @property
    def mode(self) -> str:
        return "redact_only" if self.redact_only else "keep" if self.keep else "off"

    @property
    def references(self) -> list[str]:
        return self.redact_only or self.keep
