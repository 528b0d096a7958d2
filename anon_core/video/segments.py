"""Long videos as keyframe-aligned segments, anonymized independently and joined losslessly and frame-exactly.

1. `plan_segments` scans the video packets once (demux only, no decoding): every frame's presentation time and
   duration, and the keyframes. Segment ranges start at original keyframes near multiples of `segment_s`; each
   segment's *slice* also covers a margin before (from an earlier keyframe) and after (to the next keyframe past
   the margin), so tracks bridge the cut: a face entering at the boundary is seen by both neighbours.
2. `cut_slice` stream-copies a slice's video packets (no re-encode, no audio) into a small file.
3. `anonymize_segment` runs the public video entry point (`anonymize_video`) on the slice with the encoder
   told to put an IDR exactly at the range start (keyint = the margin's length in frames, no scene-cut
   keyframes) and no B-frames, so frames before the range end never reference frames after it.
4. `join_segments` keeps each segment's packets of its own range, gives them the original frames' timestamps
   and durations, and muxes them with the original's kept side streams (audio) stream-copied, interleaved by
   time, into the input's container family. Frame count, timestamps and rotation (the display matrix) equal
   the unsegmented run's; audio packets are the original's bytes.

Only H.264 outputs (mp4/mov/mkv families) are segmented; other cases (`segmentable` says why) take the
unsegmented path. Fail closed: any mismatch (frame counts, a missing IDR, different codec headers) raises.
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction

import av

from anon_core.media.errors import CorruptMedia, UnsupportedMedia

SEGMENTABLE = {"mp4": "mp4", "mov": "mov", "mkv": "matroska"}


@dataclass
class Segment:
    index: int
    slice_start: int  # first frame (presentation order) in the slice: an original keyframe
    start: int  # first frame of the range this segment writes
    end: int  # one past its last frame
    slice_end: int  # one past the last frame in the slice (the next keyframe after the margin)


@dataclass
class SegmentPlan:
    family: str
    time_base: str  # Fraction as text (JSON-friendly)
    pts: list[int]  # per frame, presentation order
    durations: list[int]
    keyframes: list[int]  # frame indices
    segments: list[Segment] = field(default_factory=list)

    @property
    def tb(self) -> Fraction:
        return Fraction(self.time_base)

    def seconds(self, frame: int) -> float:
        return float((self.pts[min(frame, len(self.pts) - 1)] - self.pts[0]) * self.tb)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SegmentPlan:
        return cls(**{**d, "segments": [Segment(**s) for s in d["segments"]]})


def segmentable(config, family: str) -> str | None:
    """Why this video cannot be segmented under `config` (None: it can)."""
    if family not in SEGMENTABLE:
        return f"container {family!r} is not segmented"
    enc = config.video.encoder_for(family)
    if enc.codec != "libx264":
        return f"encoder {enc.codec} is not segmented (libx264 only)"
    if config.audio.anonymize_video_audio:
        return "voice anonymization needs the whole audio track"
    return None


def _scan(source) -> tuple[Fraction, list[int], list[int], set[int]]:
    with av.open(source, mode="r", metadata_errors="ignore") as c:
        v = next((s for s in c.streams.video
                  if not s.disposition & av.stream.Disposition.attached_pic), None)
        if v is None:
            raise UnsupportedMedia("no video stream in the file")
        tb = v.time_base or Fraction(1, 90000)
        frames: list[tuple[int, int]] = []
        keys: set[int] = set()
        for p in c.demux(v):
            if not p.size:
                continue
            if p.pts is None:
                raise UnsupportedMedia("video packets without timestamps cannot be segmented")
            frames.append((int(p.pts), int(p.duration or 0)))
            if p.is_keyframe:
                keys.add(int(p.pts))
    frames.sort()
    pts = [f[0] for f in frames]
    if len(set(pts)) != len(pts):
        raise UnsupportedMedia("duplicate video timestamps: not segmented")
    durs = [f[1] or (pts[i + 1] - pts[i] if i + 1 < len(pts) else 0) for i, f in enumerate(frames)]
    if durs and not durs[-1]:
        durs[-1] = durs[-2] if len(durs) > 1 else 1
    return tb, pts, durs, keys


def plan_segments(source, family: str, segment_s: float, margin_s: float) -> SegmentPlan:
    """Scan the video's packets and cut it into ranges of about `segment_s` at keyframes (one range if short)."""
    tb, pts, durs, keys = _scan(source)
    if not pts:
        raise CorruptMedia("no video frame in the file")
    kf = sorted(bisect.bisect_left(pts, k) for k in keys)
    if not kf or kf[0] != 0:
        kf = [0] + [k for k in kf if k]  # decoding starts at the first frame anyway
    plan = SegmentPlan(family, str(tb), pts, durs, kf)
    t0, n = pts[0], len(pts)

    def at(seconds: float) -> int:  # first frame at or after a time
        return bisect.bisect_left(pts, t0 + round(Fraction(seconds) / tb))

    bounds = [0]
    i = 1
    while segment_s > 0:
        target = at(i * segment_s)
        if target >= n:
            break
        k = kf[max(0, bisect.bisect_right(kf, target) - 1)]  # the keyframe at or before the target
        if k - bounds[-1] >= max(1, at(segment_s / 2)) and n - k >= max(1, at(segment_s / 4)):
            bounds.append(k)
        i += 1
    bounds.append(n)
    margin = max(0.0, margin_s)
    for idx, (a, b) in enumerate(zip(bounds, bounds[1:])):
        want = bisect.bisect_left(pts, pts[a] - round(Fraction(margin) / tb)) if idx else 0
        s = kf[max(0, bisect.bisect_right(kf, want) - 1)]
        stop = bisect.bisect_left(pts, pts[b - 1] + round(Fraction(margin) / tb)) if b < n else n
        e = next((k for k in kf if k > min(stop, n - 1)), n) if b < n else n
        plan.segments.append(Segment(idx, s, a, b, max(b, e)))
    return plan


def cut_slice(source, plan: SegmentPlan, seg: Segment, out_path: str) -> int:
    """Stream-copy the video packets of `seg`'s slice into `out_path` (same family); returns the frame count.

    Timestamps are shifted so the slice starts at 0 (muxers and the reader treat it as a normal file);
    `join_segments` restores the original ones. Leading pictures of an open GOP (before the keyframe in
    presentation order) belong to the previous range and are left out."""
    lo, hi = plan.pts[seg.slice_start], (plan.pts[seg.slice_end] if seg.slice_end < len(plan.pts) else None)
    n = 0
    with av.open(source, mode="r", metadata_errors="ignore") as c:
        v = next(s for s in c.streams.video if not s.disposition & av.stream.Disposition.attached_pic)
        with av.open(out_path, mode="w", format=SEGMENTABLE[plan.family]) as oc:
            st = oc.add_stream_from_template(v)
            started = False
            if lo > plan.pts[0]:
                c.seek(lo, stream=v, backward=True, any_frame=False)
            for p in c.demux(v):
                if not p.size or p.pts is None:
                    continue
                if not started:
                    if p.pts != lo or not p.is_keyframe:
                        continue  # before the slice's keyframe (a seek lands at or before it)
                    started = True
                if hi is not None and p.is_keyframe and p.pts >= hi:
                    break
                if p.pts < lo or (hi is not None and p.pts >= hi):
                    continue
                p.pts -= lo
                if p.dts is not None:
                    p.dts -= lo
                p.stream = st
                oc.mux(p)
                n += 1
    expected = seg.slice_end - seg.slice_start
    if n != expected:
        raise CorruptMedia(f"slice of segment {seg.index} has {n} frames, expected {expected}")
    return n


def segment_config(config, plan: SegmentPlan, seg: Segment):
    """The config a segment is encoded with: an IDR exactly at the range start, no B-frames, no audio, every
    frame re-encoded (no GOP copy)."""
    video = config.video
    enc = video.encoder_for(plan.family)
    lead = seg.start - seg.slice_start
    params = ["bframes=0", "scenecut=0", "open-gop=0"]
    if lead:
        params += [f"keyint={lead}", f"min-keyint={lead}"]
    opts = dict(enc.options)
    opts["x264-params"] = ":".join(p for p in (opts.get("x264-params"), *params) if p)
    encoders = {**video.encoders, plan.family: replace(enc, options=opts)}
    # GOP copy off: the join gives the j-th packet of a range the j-th frame's timestamps (decode order =
    # presentation order), which copied input GOPs with B-frames would break
    return replace(config, video=replace(video, encoders=encoders, keep_audio=False, faststart=False,
                                         allowed_stream_kinds=(), gop_copy=False))


class _SegmentAnonymizer:
    """The loaded anonymizer seen through a segment's config (same models, detectors and masks)."""

    def __init__(self, anonymizer, config) -> None:
        self._a = anonymizer
        self.config = config

    def __getattr__(self, name: str):
        return getattr(self._a, name)


def anonymize_segment(anonymizer, slice_path: str, plan: SegmentPlan, seg: Segment, out_path: str, rec,
                      deadline=None) -> None:
    """Anonymize one slice with the public video entry point; fills `rec` like a whole video."""
    from anon_core.media.probe import MediaType
    from anon_core.video.anonymize import anonymize_video

    proxy = _SegmentAnonymizer(anonymizer, segment_config(anonymizer.config, plan, seg))
    anonymize_video(proxy, slice_path, out_path, MediaType("video", plan.family), rec, deadline=deadline)
    if rec.frames != seg.slice_end - seg.slice_start:
        raise CorruptMedia(f"segment {seg.index}: {rec.frames} frames decoded, expected "
                           f"{seg.slice_end - seg.slice_start}")


def _range_packets(path: str, plan: SegmentPlan, seg: Segment):
    """Yield (time in seconds, packet) of a segment output's own range, with the original timestamps."""
    lead = seg.start - seg.slice_start
    tb = plan.tb
    with av.open(path, mode="r") as c:
        v = c.streams.video[0]
        j = 0
        for p in c.demux(v):
            if not p.size:
                continue
            if lead <= j < seg.end - seg.slice_start:
                if j == lead and not p.is_keyframe:
                    raise RuntimeError(f"segment {seg.index}: no IDR at its range start (frame {seg.start})")
                f = seg.slice_start + j
                p.pts = p.dts = plan.pts[f]
                p.duration = plan.durations[f]
                p.time_base = tb
                yield float(plan.pts[f] * tb), p
            j += 1
        if j != seg.slice_end - seg.slice_start:
            raise RuntimeError(f"segment {seg.index}: output has {j} frames, expected "
                               f"{seg.slice_end - seg.slice_start}")


def join_segments(source, plan: SegmentPlan, outputs: list[str], out_path: str, settings) -> dict:
    """Concatenate the segments' range packets and the original's kept side streams into `out_path`.

    `settings` is the job's VideoSettings (stream and tag policy, faststart). Returns what the audit records.
    """
    from anon_core.video.streams import filter_tags, plan_streams

    if len(outputs) != len(plan.segments):
        raise RuntimeError(f"{len(outputs)} segment outputs for {len(plan.segments)} segments")
    heads = []
    for path in outputs:
        with av.open(path) as c:
            heads.append(bytes(c.streams.video[0].codec_context.extradata or b""))
    if len(set(heads)) != 1:
        raise RuntimeError("segments were encoded with different codec headers: not joined")
    options = {"movflags": "+faststart"} if plan.family in ("mp4", "mov") and settings.faststart else {}
    written, copied = 0, 0
    with av.open(source, mode="r", metadata_errors="ignore") as src, av.open(outputs[0]) as first:
        splan = plan_streams(src, settings)
        with av.open(out_path, mode="w", format=SEGMENTABLE[plan.family], options=options) as oc:
            vt = first.streams.video[0]
            vout = oc.add_stream_from_template(vt)
            vout.time_base = plan.tb
            _set_tags(vout, filter_tags(dict(splan.video.metadata), settings.allowed_stream_tags)[0])
            side = {}
            for s in splan.copy:
                o = oc.add_stream_from_template(s)
                _set_tags(o, filter_tags(dict(s.metadata), settings.allowed_stream_tags)[0])
                side[s.index] = o
            _set_tags(oc, splan.container_tags)

            def video():
                for seg, path in zip(plan.segments, outputs):
                    yield from _range_packets(path, plan, seg)

            def others():
                if not side:
                    return
                for p in src.demux([s for s in src.streams if s.index in side]):
                    if p.size and p.dts is not None:
                        yield float(p.dts * p.time_base), p

            def tagged(it, rank):
                for i, (t, p) in enumerate(it):
                    yield t, rank, i, p

            for _, rank, _, p in heapq.merge(tagged(video(), 0), tagged(others(), 1)):
                if rank == 0:
                    p.stream = vout
                    written += 1
                else:
                    p.stream = side[p.stream.index]
                    copied += 1
                oc.mux(p)
        removed = splan.removed()
        streams = splan.to_dict()
    if written != len(plan.pts):
        raise RuntimeError(f"joined {written} of {len(plan.pts)} frames")
    return {"frames": written, "packets_copied": copied, "metadata_removed": removed, "streams": streams}


def _set_tags(obj, tags: dict[str, str]) -> None:
    """Exactly `tags` on a container or stream (the kept ones; templates bring their own)."""
    md = obj.metadata
    for k in list(md.keys()):
        del md[k]
    for k, v in tags.items():
        md[k] = v
