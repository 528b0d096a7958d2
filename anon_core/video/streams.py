"""Metadata policy for container streams and tags: what is re-encoded, copied, or dropped.

Only the first real video stream is anonymized. Everything else is copied only when the policy
allows it, because side streams carry identifying data of their own: GPS tracks and GoPro GPMF
telemetry (data streams), subtitles/captions naming people, cover art and thumbnails (attached
pictures, attachments), and a second camera angle that would otherwise go out un-anonymized.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import av

from anon_core.media.errors import UnsupportedMedia
from anon_core.video.settings import VideoSettings


@dataclass
class DroppedStream:
    index: int
    kind: str
    codec: str
    reason: str

    def label(self) -> str:
        return f"stream #{self.index} ({self.kind}/{self.codec}): {self.reason}"


@dataclass
class StreamPlan:
    video: av.VideoStream
    copy: list[av.stream.Stream] = field(default_factory=list)  # remuxed packet by packet
    attachments: list[av.stream.Stream] = field(default_factory=list)  # allow-listed attachments
    dropped: list[DroppedStream] = field(default_factory=list)
    container_tags: dict[str, str] = field(default_factory=dict)  # kept
    container_tags_dropped: list[str] = field(default_factory=list)
    stream_tags_dropped: dict[int, list[str]] = field(default_factory=dict)
    chapters_dropped: int = 0
    # plain-data copies for the audit: stream objects must not be touched after the input closes
    video_index: int = -1
    copied_info: list[dict] = field(default_factory=list)

    def removed(self) -> list[str]:
        """Human-readable list for AuditRecord.metadata_removed."""
        out = [f"container tag: {k}" for k in self.container_tags_dropped]
        for idx, keys in sorted(self.stream_tags_dropped.items()):
            out += [f"stream #{idx} tag: {k}" for k in keys]
        out += [d.label() for d in self.dropped]
        if self.chapters_dropped:
            out.append(f"chapters: {self.chapters_dropped}")
        return out

    def to_dict(self) -> dict:
        return {
            "video_stream": self.video_index,
            "streams_copied": list(self.copied_info),
            "streams_dropped": [vars(d) for d in self.dropped],
            "container_tags_dropped": list(self.container_tags_dropped),
            "stream_tags_dropped": {str(k): v for k, v in self.stream_tags_dropped.items()},
            "chapters_dropped": self.chapters_dropped,
        }


def _codec_name(stream: av.stream.Stream) -> str:
    try:
        ctx = stream.codec_context
        if ctx is not None and ctx.name:
            return ctx.name
    except Exception:  # data/attachment streams have no codec context on some versions
        pass
    tag = getattr(stream, "codec_tag", None) or stream.metadata.get("handler_name", "")
    return str(tag or "unknown")


def _is_cover_art(stream: av.stream.Stream) -> bool:
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def filter_tags(tags: dict[str, str], allowed: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    allow = {a.lower() for a in allowed}
    kept = {k: v for k, v in tags.items() if k.lower() in allow}
    return kept, sorted(k for k in tags if k.lower() not in allow)


def plan_streams(container: av.container.InputContainer, settings: VideoSettings) -> StreamPlan:
    video = next((s for s in container.streams.video if not _is_cover_art(s)), None)
    if video is None:
        raise UnsupportedMedia("no video stream in the file")
    plan = StreamPlan(video=video)
    allowed = set(settings.allowed_stream_kinds)
    for s in container.streams:
        if s is video:
            continue
        kind, codec = s.type, _codec_name(s)
        if kind == "video":
            why = "cover art / thumbnail" if _is_cover_art(s) else "extra video stream (only the first is anonymized)"
            plan.dropped.append(DroppedStream(s.index, kind, codec, why))
        elif kind == "audio":
            if settings.keep_audio:
                plan.copy.append(s)
            else:
                plan.dropped.append(DroppedStream(s.index, kind, codec, "audio not kept (keep_audio=false)"))
        elif kind in allowed:
            (plan.attachments if kind == "attachment" else plan.copy).append(s)
        else:
            why = {"data": "data stream (telemetry/GPS/timecode)", "subtitle": "subtitles",
                   "attachment": "attachment (cover art/fonts/files)"}.get(kind, "unknown stream type")
            plan.dropped.append(DroppedStream(s.index, kind, codec, why))
    plan.container_tags, plan.container_tags_dropped = filter_tags(dict(container.metadata),
                                                                   settings.allowed_container_tags)
    for s in [video, *plan.copy, *plan.attachments]:
        _, dropped = filter_tags(dict(s.metadata), settings.allowed_stream_tags)
        if dropped:
            plan.stream_tags_dropped[s.index] = dropped
    plan.video_index = video.index
    plan.copied_info = [{"index": s.index, "kind": s.type, "codec": _codec_name(s)} for s in plan.copy]
    try:
        plan.chapters_dropped = len(container.chapters())
    except Exception:  # older PyAV: no chapter API, nothing to copy either
        plan.chapters_dropped = 0
    return plan
