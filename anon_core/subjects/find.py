"""`anon find-subject`: where does a person appear? (Art. 15 access / Art. 17 erasure requests)

Every image, and the frames of every video on a time grid (`every_s`), go through the pipeline's face
detectors; each face is embedded and compared with the reference photos. The answer lists assets
with the matching frames, timestamps, boxes and distances; embeddings are never written anywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from anon_core.config import AnonConfig
from anon_core.media.errors import AssetError
from anon_core.media.probe import sniff
from anon_core.storage import filesystem, is_local, list_inputs

log = logging.getLogger(__name__)


@dataclass
class Appearance:
    asset: str
    media_type: str
    frames: list[int] = field(default_factory=list)
    timestamps_s: list[float] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)
    distances: list[float] = field(default_factory=list)
    frames_checked: int = 0
    error: str | None = None

    def to_dict(self) -> dict:
        return {"asset": self.asset, "media_type": self.media_type, "matches": len(self.frames),
                "frames": self.frames, "timestamps_s": [round(t, 3) for t in self.timestamps_s],
                "boxes": [[round(v, 1) for v in b] for b in self.boxes],
                "distances": [round(d, 3) for d in self.distances], "frames_checked": self.frames_checked,
                **({"error": self.error} if self.error else {})}


def find_subject(input_uri: str, refs: list[str], config: AnonConfig | None = None, every_s: float = 0.5,
                 threshold: float | None = None) -> Iterator[Appearance]:
    """Yield one Appearance per image/video asset under `input_uri` (matches may be empty)."""
    from anon_core.pipeline import Anonymizer
    from anon_core.subjects.filter import SubjectFilter
    from anon_core.subjects.settings import SubjectSettings

    config = config or AnonConfig(policy="faces")
    config.subjects = SubjectSettings()  # the detector must see every face; matching happens here
    an = Anonymizer(config)
    settings = SubjectSettings(redact_only=list(refs), threshold=threshold or SubjectSettings().threshold)
    matcher = SubjectFilter.build(settings, lambda rgb: an.detect([rgb])[0])
    fs, root = filesystem(input_uri)
    for path, rel in list_inputs(fs, root):
        with fs.open(path, "rb") as fh:
            media = sniff(fh.read(64))
        if media.kind not in ("image", "video"):
            continue
        app = Appearance(rel, media.kind)
        try:
            if media.kind == "image":
                _image(an, matcher, fs, path, media, app)
            else:
                _video(an, matcher, fs, path, app, every_s)
        except AssetError as exc:
            app.error = str(exc)
        yield app


def _faces(an, frames: list[np.ndarray]):
    return [d[d.labels.astype(str) == "face"] if len(d) else d for d in an.detect(frames)]


def _note(matcher, rgb, d, app: Appearance, index: int, t: float) -> None:
    if not len(d):
        return
    m, dist = matcher.match(rgb, d.xyxy)
    for i in np.flatnonzero(m):
        app.frames.append(index)
        app.timestamps_s.append(t)
        app.boxes.append([float(v) for v in d.xyxy[i]])
        app.distances.append(float(dist[i]))


def _image(an, matcher, fs, path, media, app: Appearance) -> None:
    from anon_core.media import image_io

    lim = an.config.limits
    rgb = image_io.decode(fs.cat_file(path), media.format, lim.max_pixels, lim.max_side).rgb
    (d,) = _faces(an, [rgb])
    app.frames_checked = 1
    _note(matcher, rgb, d, app, 0, 0.0)


def _video(an, matcher, fs, path, app: Appearance, every_s: float) -> None:
    from anon_core.video.decode import VideoReader

    src = path if is_local(fs) else fs.open(path, "rb")
    reader = VideoReader(src, an.config.video, an.config.limits)
    try:
        reader.prime()
        step = max(1, int(round(every_s * float(reader.rate)))) if every_s > 0 else 1
        for batch in reader.batches(an.config.video.batch_size):
            todo = [f for f in batch.frames if f.index % step == 0]
            if not todo:
                continue
            for f, d in zip(todo, _faces(an, [f.rgb for f in todo])):
                app.frames_checked += 1
                t = float((f.pts - (reader.first_pts or 0)) * reader.time_base)
                _note(matcher, f.rgb, d, app, f.index, t)
    finally:
        reader.close()
        if not isinstance(src, str):
            src.close()
