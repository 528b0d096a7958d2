"""Residual-risk check: a second, different detector looks at the anonymized output.

What it still finds is re-masked (`remask`), only counted (`flag`) or fails the asset (`fail`); the
counts go to the audit record as `extra["residual"]`. Images are checked once, after masking and
before encoding; videos on a sample of output frames (`residual.video_every_s`), in the analysis
thread, before the frames reach the encoder, so a re-mask lands in the published file.
"""

from __future__ import annotations

import numpy as np

from anon_core.config import AnonConfig
from anon_core.detectors import create_detector
from anon_core.masking import Masker
from anon_core.masking.apply import MaskSpec
from anon_core.media.errors import AnalysisFailed, ResidualRisk

# Residual findings of a class without a configured mask get a solid box: the most conservative operator.
_FALLBACK_MASK = MaskSpec("fill", "box", 1.2, {"color": [0, 0, 0]})


class ResidualChecker:
    """Loads the second detector once per Anonymizer; `session()` holds one asset's counts."""

    def __init__(self, config: AnonConfig) -> None:
        rs = config.residual
        params = dict(rs.detector.params)
        params.setdefault("device", config.device)
        from anon_core.licenses import check

        check("residual.detector", rs.detector.name, params, config.models.allow_licenses)  # before loading
        self.detector = create_detector(rs.detector.name, **params)
        self.action = rs.action
        self.every_s = float(rs.video_every_s)
        wanted = set(config.wanted_classes())
        # only classes the policy masks count as residual risk (a person detector under policy=faces does not)
        self.classes = [c for c in self.detector.classes if c in wanted]
        if not self.classes:
            raise ValueError(f"residual.detector {rs.detector.name!r} finds {list(self.detector.classes)}, "
                             f"none of which the policy masks ({sorted(wanted)})")
        self.masker = Masker({c: config.masks.get(c, _FALLBACK_MASK) for c in self.classes})
        self.subjects = None  # set by the Anonymizer when subjects.keep/redact_only filter the faces

    def info(self) -> dict:
        from anon_core.licenses import license_of

        return vars(license_of(self.detector.info()))

    def session(self, fps: float | None = None) -> ResidualSession:
        every = 1 if not fps or self.every_s <= 0 else max(1, round(self.every_s * fps))
        return ResidualSession(self, every)

    def check_image(self, rgb: np.ndarray, rec, recorder=None) -> np.ndarray:
        s = self.session()
        out = s.check(rgb, 0, recorder)
        rec.extra["residual"] = s.report()
        return out


class ResidualSession:
    def __init__(self, checker: ResidualChecker, every: int) -> None:
        self.checker = checker
        self.every = every
        self.frames_checked = 0
        self.frames_with_findings = 0
        self.found: dict[str, int] = {}
        self.remasked = 0

    def due(self, index: int) -> bool:
        return index % self.every == 0

    def check(self, rgb: np.ndarray, index: int, recorder=None) -> np.ndarray:
        c = self.checker
        try:
            dets = c.detector.detect([rgb])[0]
        except Exception as exc:  # fail closed: an unchecked output is not "checked clean"
            raise AnalysisFailed(f"residual detector failed: {type(exc).__name__}: {exc}") from exc
        if len(dets):
            dets = dets[np.isin(dets.labels.astype(str), c.classes)]
        if len(dets) and c.subjects is not None:  # a kept subject is not a residual risk
            dets = c.subjects.apply([rgb], [dets])[0]
        self.frames_checked += 1
        if not len(dets):
            return rgb
        self.frames_with_findings += 1
        for label, n in dets.counts().items():
            self.found[label] = self.found.get(label, 0) + n
        if c.action == "fail":
            what = ", ".join(f"{n} {k}" for k, n in sorted(dets.counts().items()))
            raise ResidualRisk(f"residual check found {what} after masking (frame {index})")
        if c.action == "remask":
            rgb, n = c.masker.apply(rgb, dets, recorder, index)
            self.remasked += n
        return rgb

    def report(self) -> dict:
        c = self.checker
        return {"model": c.info(), "action": c.action, "frames_checked": self.frames_checked,
                "every_n_frames": self.every, "found": dict(self.found), "found_total": sum(self.found.values()),
                "frames_with_findings": self.frames_with_findings, "remasked": self.remasked}

