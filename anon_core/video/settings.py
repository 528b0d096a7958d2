"""Video settings: encoder per container family, batching, tracking windows, stream/tag policy.

Encoder defaults (chosen for an archive pipeline where the encoder, not detection, is the wall):

- MP4 / MOV / MKV -> H.264 (libx264), yuv420p, preset ``veryfast``, CRF 20, threads auto.
  ``veryfast`` is the knee of x264's speed/size curve: about 3x the speed of ``medium`` for ~10-15 %
  more bits at equal quality, while ``ultrafast`` (another ~3x) disables CABAC/B-frames and costs
  50-100 % more bits. CRF 20 is visually transparent for typical camera footage; masked regions are
  smooth and cheap to code, so the output is usually smaller than the input. yuv420p is the only
  pixel format every player decodes.
- WebM -> VP9 (libvpx-vp9), CRF 32 with ``b=0`` (constant quality, like x264 CRF ~20-23),
  ``deadline=good`` + ``cpu-used=5`` and row-based multithreading: VP9's fastest setting that still
  uses its good-quality path; ``realtime`` / ``cpu-used=8`` is ~2x faster at visibly lower quality.
- ``faststart`` moves the MP4/MOV index to the front (a second pass over the output file) so
  outputs stream over HTTP; turn it off to save that I/O on very large archives.

Raise the CRF (smaller files, softer background) or pick a faster preset for throughput; the
masked regions are unaffected by either, only the untouched background's fidelity changes.

GOP copy (``gop_copy``, H.264 in MP4/MOV/MKV): GOPs in which nothing is masked are not encoded at all
(their packets are copied; the coded picture is the input's, PSNR = inf); only runs of GOPs with masks
go through x264 with the settings above, B-frames included (anon_core/video/gop.py). Quality of the
unmasked picture per clip: benchmarks/video_fps.py (PSNR/SSIM outside the masked boxes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from anon_core.schema import SchemaError


@dataclass
class EncoderSettings:
    codec: str = "libx264"
    preset: str = "veryfast"  # libx264 only
    crf: int = 20
    threads: int = 0  # 0: the codec picks (one per core)
    pix_fmt: str = "yuv420p"
    options: dict[str, str] = field(default_factory=dict)  # extra codec options, passed verbatim


def _default_encoders() -> dict[str, EncoderSettings]:
    return {
        "mp4": EncoderSettings(),
        "mov": EncoderSettings(),
        "mkv": EncoderSettings(),
        "webm": EncoderSettings(
            codec="libvpx-vp9", preset="", crf=32,
            options={"b": "0", "deadline": "good", "cpu-used": "5", "row-mt": "1"},
        ),
    }


@dataclass
class VideoSettings:
    """How videos are decoded, analysed and re-encoded (see the module docstring for encoder choices).

    batch_size: frames per detector call (bigger batches use an accelerator better; memory grows
        with batch_size x frame size).
    lookahead_s / lead_s / trail_s / max_gap_s: the MaskScheduler windows in seconds (converted
        with the stream's average frame rate). The look-ahead is how many frames are held back.
    detect_every_k: run the detector on every k-th frame only; the tracker propagates boxes in
        between. 1 by default; with adaptive detection `roi_every` multiplies it (see below).
    mask_thresh: raw detections at or above this score are always masked in their own frame
        (used only for detectors that don't mark their own confident detections).
    candidate_score: detectors that support it also return weaker candidates down to this score;
        they are masked only when the tracker attaches them to a track (ByteTrack's second stage),
        which carries masks through blur, profile turns and partial occlusion.
    weak_track_hits: candidates seen on this many consecutive frames (with detect_every_k > 1: on
        max(2, ceil(hits / k)) consecutive analysed frames) start a masked track of
        their own, as if confident (0: off). Temporal evidence for faces a single frame cannot settle:
        pan/zoom leak 0.75 % -> 0 % for +0.4 points of over-masking (benchmarks/RESULTS.md, video).
    keyframe_s: adaptive detection (anon_core/video/adaptive.py): the full detector runs on keyframes, at
        least this often (and on scene cuts, the first and the last frame); the analysed frames between them
        run the `roi_classes` detectors on crops around their live tracks only. 0: the full detector on every
        analysed frame (the behaviour before issue 18). Needs lead_s >= keyframe_s so that a face first seen
        at a keyframe is masked back to where it appeared (benchmarks/RESULTS.md, issue 18).
    roi_classes: classes re-detected between keyframes (on crops); other classes' detectors (plates,
        persons, text) run on keyframes only and their tracks are interpolated in between.
    roi_every: with adaptive detection, frames are analysed (keyframe or crops) every roi_every x
        detect_every_k frames and interpolated in between (keyframes fall on analysed frames). Without
        adaptive detection (keyframe_s = 0, or no look-ahead as in the default stream) it has no effect.
    roi_context: crop side as a multiple of the tracked box's larger side (the face's motion until the
        next frame must stay inside it).
    roi_face_px: a crop around a box larger than this is analysed downscaled so the box is this size (the
        networks find faces of that size surely; a 200-px face costs 10x less). 0: crops at full size.
    roi_max_area: when the crops (their pixels as analysed) of a frame would cover more than this share of
        it, it is a keyframe.
    scene_cut: mean absolute change of a 64-px grey thumbnail (0..1) against the previous analysed frame
        above which a frame is a keyframe (a cut: tracks predict nothing there).
    static_max_s: static shots: a keyframe may be deferred up to this long while nothing outside the tracked
        crops changed since the last one and every track was found on the previous analysed frame (0: off).
    static_diff: the largest change (0..1) of a blurred 160-px grey thumbnail still counted as "nothing changed"
        (compression noise on a still camera is ~0.01; a person entering is > 0.1).
    partial_keyframes: a due keyframe that static deferral cannot skip searches only the box around what
        changed since the detector last looked there, when that box plus the track crops cost at most
        `roi_max_area` of the frame (faces-only policies; needs static_max_s > 0; adaptive.py).
    partial_margin: that box is grown by this share of the frame's larger side on each side.
    gop_copy: H.264 GOPs in which nothing was masked are copied from the input (coded slices bit-exact,
        SEI dropped) and only the GOPs with masks are re-encoded (anon_core/video/gop.py); inputs it cannot
        splice are re-encoded whole as before.
    keep_audio: copy audio streams bit-exact (remux); False drops them.
    allowed_stream_kinds: stream types kept besides the first video stream and audio, e.g.
        ("subtitle",). Data (GPS, GoPro GPMF telemetry, timecode) and attachments (cover art,
        fonts) are dropped by default: they can identify people and places.
    allowed_container_tags / allowed_stream_tags: metadata keys copied to the output; every other
        tag (creation_time, location, title, handler names, device make/model) is dropped.
    pipelining: overlap decode, detection+masking and encode in three threads with bounded queues.
    queue_batches: queue depth between stages, in batches (memory vs. smoothing of stalls).
    faststart: MP4/MOV index at the front of the file.
    strict_frame_count: fail (CorruptMedia) when fewer frames decode than the container announces.
    """

    encoders: dict[str, EncoderSettings] = field(default_factory=_default_encoders)
    batch_size: int = 8
    lookahead_s: float = 0.5
    lead_s: float = 0.3
    trail_s: float = 0.5
    max_gap_s: float = 0.5
    detect_every_k: int = 1
    mask_thresh: float = 0.5
    candidate_score: float = 0.2
    weak_track_hits: int = 3
    keyframe_s: float = 0.25
    roi_classes: tuple[str, ...] = ("face",)
    roi_every: int = 2
    roi_context: float = 2.0
    roi_face_px: float = 64.0
    roi_max_area: float = 0.5
    scene_cut: float = 0.1
    static_max_s: float = 2.0
    static_diff: float = 0.03
    partial_keyframes: bool = True
    partial_margin: float = 0.1
    gop_copy: bool = True
    keep_audio: bool = True
    allowed_stream_kinds: tuple[str, ...] = ()
    allowed_container_tags: tuple[str, ...] = ()
    allowed_stream_tags: tuple[str, ...] = ("language",)
    pipelining: bool = True
    queue_batches: int = 2
    faststart: bool = True
    strict_frame_count: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "detect_every_k", "queue_batches", "roi_every"):
            if getattr(self, name) < 1:
                raise SchemaError(name, f"must be >= 1; got {getattr(self, name)!r}")
        if self.keyframe_s < 0:
            raise SchemaError("keyframe_s", f"must be >= 0 (0: full detection on every analysed frame); "
                                            f"got {self.keyframe_s!r}")
        if self.roi_context < 1:
            raise SchemaError("roi_context", f"must be >= 1 (crop side / box side); got {self.roi_context!r}")
        if self.roi_face_px < 0:
            raise SchemaError("roi_face_px", f"must be >= 0 (0: crops at full size); got {self.roi_face_px!r}")
        if not 0 <= self.roi_max_area <= 1:
            raise SchemaError("roi_max_area", f"must be in [0, 1]; got {self.roi_max_area!r}")
        if not 0 <= self.partial_margin <= 1:
            raise SchemaError("partial_margin", f"must be in [0, 1]; got {self.partial_margin!r}")
        if self.static_max_s < 0 or self.static_diff < 0:
            raise SchemaError("static_max_s", "static_max_s and static_diff must be >= 0")
        if self.scene_cut < 0:
            raise SchemaError("scene_cut", f"must be >= 0; got {self.scene_cut!r}")

    def encoder_for(self, family: str) -> EncoderSettings:
        return self.encoders.get(family) or self.encoders["mp4"]
