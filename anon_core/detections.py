"""One value type for detector output, consumed by tracking, masking, audit and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Detections:
    """Boxes found in one frame.

    xyxy: (N, 4) float32 absolute pixels, x2/y2 exclusive.
    scores: (N,) float32 in [0, 1].
    labels: (N,) object array of class names ("face", "plate", "person", "text").
    landmarks: optional (N, K, 2) float32 (faces: eyes, nose, mouth corners).
    masks: optional list of per-detection boolean arrays (H, W) for silhouettes.
    track_ids: optional (N,) int64, -1 where untracked.
    """

    xyxy: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    landmarks: np.ndarray | None = None
    masks: list[np.ndarray] | None = None
    track_ids: np.ndarray | None = None
    data: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=object).reshape(-1)
        n = len(self.xyxy)
        if len(self.scores) != n or len(self.labels) != n:
            raise ValueError("xyxy, scores and labels must have the same length")
        if self.landmarks is not None:
            self.landmarks = np.asarray(self.landmarks, dtype=np.float32)
        if self.track_ids is not None:
            self.track_ids = np.asarray(self.track_ids, dtype=np.int64).reshape(-1)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, object))

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index) -> Detections:
        """Select rows with an integer array, a boolean mask or a slice."""
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        return Detections(
            xyxy=self.xyxy[idx],
            scores=self.scores[idx],
            labels=self.labels[idx],
            landmarks=None if self.landmarks is None else self.landmarks[idx],
            masks=None if self.masks is None else [self.masks[i] for i in idx],
            track_ids=None if self.track_ids is None else self.track_ids[idx],
            data=self._data_rows(idx),
        )

    def _data_rows(self, idx: np.ndarray) -> dict:
        """Per-row arrays in `data` follow the selection; anything else is shared metadata."""
        n = len(self)
        return {k: v[idx] if isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == n else v
                for k, v in self.data.items()}

    @classmethod
    def merge(cls, parts: list[Detections]) -> Detections:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        lm = None
        if all(p.landmarks is not None for p in parts) and len({p.landmarks.shape[1:] for p in parts}) == 1:
            lm = np.concatenate([p.landmarks for p in parts])
        masks = None
        if all(p.masks is not None for p in parts):
            masks = [m for p in parts for m in p.masks]
        tids = None
        if all(p.track_ids is not None for p in parts):
            tids = np.concatenate([p.track_ids for p in parts])
        keys = set.intersection(*(set(p.data) for p in parts))
        data = {k: np.concatenate([p.data[k] for p in parts]) for k in keys
                if all(isinstance(p.data[k], np.ndarray) and len(p.data[k]) == len(p) for p in parts)}
        return cls(
            xyxy=np.concatenate([p.xyxy for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            landmarks=lm,
            masks=masks,
            track_ids=tids,
            data=data,
        )

    def counts(self) -> dict[str, int]:
        names, n = np.unique(self.labels.astype(str), return_counts=True)
        return {str(k): int(v) for k, v in zip(names, n)}

    @property
    def wh(self) -> np.ndarray:
        return self.xyxy[:, 2:] - self.xyxy[:, :2]
