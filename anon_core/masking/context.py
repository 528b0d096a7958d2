"""Per-asset state that the frame loop hands, unchanged, to mask application.

`recorder`: vault.enabled keeps the pixels under every mask (anon_core/vault/recorder.py).
`subjects`: subjects.redact_only/keep decides per face and per track which faces are masked
(anon_core/subjects/filter.py). Both are None when their feature is off; the engine only passes the
context through, so features that act at mask time need no change of the frame loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class MaskContext:
    recorder: Any = None  # MaskRecorder
    subjects: Any = None  # SubjectSession
