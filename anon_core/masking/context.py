"""Per-asset state that the frame loop hands, unchanged, to mask application, and the extension points.

`recorder`: vault.enabled keeps the pixels under every mask (anon_core/vault/recorder.py).
`subjects`: subjects.redact_only/keep decides per face and per track which faces are masked
(anon_core/subjects/filter.py). Both are None when their feature is off; the engine only passes the
context through, so features that act at mask time need no change of the frame loop.
`kind`: which path masks ("image", "video" for a file, "stream" for the WebSocket service, "validate"), set
by the frame engine; `record`: the asset's audit record where there is one; `extra`: free-form.

Every path masks through `Anonymizer.mask(frame, detections, ctx, index)`. Around it, two lists on the
Anonymizer: `detection_filters` see each frame's detections before tracking and masking; `mask_hooks` see
(original, masked, detections, ctx, index) after the operators ran and may return a replacement frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anon_core.detections import Detections


@dataclass
class MaskContext:
    recorder: Any = None  # MaskRecorder
    subjects: Any = None  # SubjectSession
    kind: str = "image"
    record: Any = None  # AuditRecord
    extra: dict[str, Any] = field(default_factory=dict)


# A post-detection step: (frame, detections) -> the detections to keep (before tracking and masking).
DetectionFilter = Callable[[np.ndarray, Detections], Detections]
# After a frame is masked: (original, masked, detections masked, ctx, frame index) -> a replacement or None.
MaskHook = Callable[[np.ndarray, np.ndarray, Detections, MaskContext, int], "np.ndarray | None"]


def mask_whole_frame(frame: np.ndarray) -> np.ndarray:
    """What a frame that could not be analysed is published as (on_analysis_error=mask_frame): flat grey."""
    return np.full_like(frame, 128)
