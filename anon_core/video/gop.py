"""GOP copy: H.264 groups of pictures in which nothing is masked go to the output as the input coded them.

A GOP (a keyframe packet and the packets up to the next one) whose every frame came out of the frame engine
unchanged (analysed, nothing masked, not failed, not touched by the residual check) is muxed from the input's
packets; only the runs of GOPs with masks are re-encoded. Sparse footage then costs about one decode.

How the two kinds of segment share one H.264 track:
- parameter sets: the re-encoded segments use x264 with its SPS/PPS under ids the input does not use
  (`sps-id`); the track's avcC carries both the input's and x264's sets, so each segment refers to its own
  (an x264 profile matching the input's; no in-band headers);
- timestamps: pts are the input's; the j-th packet (decode order) of every segment gets dts = the segment's
  j-th smallest pts minus one delay `C` for the whole track (4 frames: x264's B-pyramid reorders by 2), so
  dts rise across segment boundaries whatever either side's reordering was. A copied GOP whose reordering
  would need more than `C` is re-encoded instead; re-encoded runs keep the preset's B-frames (without them
  x264 veryfast CRF 20 wrote 22-26 % more bytes at equal PSNR on three of the sample clips);
- SEI NAL units are dropped from copied packets (cameras put GPS, serial numbers, timecodes there; the
  container's metadata policy would not see them); the coded slices stay bit-exact.

Only a cut at a keyframe without leading pictures (no frame of the GOP shows before its keyframe) is used,
only for H.264 in MP4/MOV/MKV in an 8-bit 4:2:0 format the encoder writes too, with frame-sized packets;
anything else is re-encoded as before (`eligible` says why not).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import av

H264_PROFILES = {66: "baseline", 77: "main", 100: "high"}
NAL_SEI, NAL_SPS, NAL_PPS = 6, 7, 8


@dataclass
class Gop:
    """The input packets of one GOP, in decode order, and the pts of the frames they hold."""

    index: int
    packets: list[av.Packet] = field(default_factory=list)
    pts: list[int] = field(default_factory=list)
    closed: bool = False  # the next keyframe (or the end) was demuxed
    oversized: bool = False  # more packets than the copy buffer may hold: re-encoded


def split_avcc(data: bytes, nal_len: int) -> list[bytes]:
    """NAL units of a length-prefixed (AVCC) packet; ValueError if the lengths do not add up."""
    out, i = [], 0
    while i < len(data):
        if i + nal_len > len(data):
            raise ValueError("truncated NAL length")
        n = int.from_bytes(data[i:i + nal_len], "big")
        i += nal_len
        if n == 0 or i + n > len(data):
            raise ValueError("bad NAL length")
        out.append(data[i:i + n])
        i += n
    return out


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream (start codes 00 00 01 / 00 00 00 01)."""
    out, starts, i = [], [], 0
    while True:
        j = data.find(b"\x00\x00\x01", i)
        if j < 0:
            break
        starts.append(j + 3)
        i = j + 3
    for k, s in enumerate(starts):
        end = len(data) if k + 1 == len(starts) else starts[k + 1] - 3
        nal = data[s:end]
        while nal.endswith(b"\x00") and k + 1 < len(starts):  # the 4-byte start code's leading zero
            nal = nal[:-1]
        if nal:
            out.append(nal)
    return out


def join_avcc(nals: list[bytes], nal_len: int) -> bytes:
    return b"".join(len(n).to_bytes(nal_len, "big") + n for n in nals)


def _ue(data: bytes, bit: int) -> tuple[int, int]:
    """Exp-Golomb unsigned value starting at `bit` of the RBSP; returns (value, next bit)."""
    zeros = 0
    while (data[bit // 8] >> (7 - bit % 8)) & 1 == 0:
        zeros += 1
        bit += 1
        if zeros > 31:
            raise ValueError("bad exp-golomb code")
    bit += 1
    value = 0
    for _ in range(zeros):
        value = (value << 1) | ((data[bit // 8] >> (7 - bit % 8)) & 1)
        bit += 1
    return (1 << zeros) - 1 + value, bit


def parameter_set_id(nal: bytes) -> int:
    """seq_parameter_set_id of an SPS / pic_parameter_set_id of a PPS (both the first ue(v) of their RBSP)."""
    kind = nal[0] & 0x1F
    start = 4 if kind == NAL_SPS else 1  # SPS: profile, constraint flags and level come first
    return _ue(nal, start * 8)[0]


@dataclass
class AvcConfig:
    """The parsed avcC box (ISO/IEC 14496-15) of an H.264 track."""

    profile: int
    compat: int
    level: int
    nal_len: int
    sps: list[bytes]
    pps: list[bytes]
    tail: bytes  # the High-profile extension (chroma format, bit depths, SPS extensions), kept verbatim

    @classmethod
    def parse(cls, data: bytes) -> AvcConfig:
        if len(data) < 7 or data[0] != 1:
            raise ValueError("not an avcC configuration record")
        nal_len = (data[4] & 3) + 1
        i, sps, pps = 6, [], []
        for _ in range(data[5] & 0x1F):
            n = int.from_bytes(data[i:i + 2], "big")
            sps.append(data[i + 2:i + 2 + n])
            i += 2 + n
        for _ in range(data[i]):
            n = int.from_bytes(data[i + 1:i + 3], "big")
            pps.append(data[i + 3:i + 3 + n])
            i += 2 + n
        i += 1
        return cls(data[1], data[2], data[3], nal_len, sps, pps, data[i:])

    def build(self) -> bytes:
        out = bytearray([1, self.profile, self.compat, self.level, 0xFC | (self.nal_len - 1),
                         0xE0 | len(self.sps)])
        for s in self.sps:
            out += len(s).to_bytes(2, "big") + s
        out.append(len(self.pps))
        for p in self.pps:
            out += len(p).to_bytes(2, "big") + p
        return bytes(out + self.tail)

    def free_id(self) -> int:
        """A parameter-set id (0..31) neither the input's SPS nor its PPS use."""
        used = {parameter_set_id(s) for s in self.sps} | {parameter_set_id(p) for p in self.pps}
        return next(i for i in range(31, -1, -1) if i not in used)


def eligible(reader, family: str, enc, pad: tuple[int, int], audio_anonymized: bool = False) -> str | None:
    """None when GOP copy can be used for this input and output, else why not (for the audit)."""
    ctx = reader.plan.video.codec_context
    if family not in ("mp4", "mov", "mkv"):
        return f"container {family}"
    if ctx.name != "h264" or enc.codec != "libx264":
        return f"codec {ctx.name} -> {enc.codec}"
    if ctx.pix_fmt not in ("yuv420p", "yuvj420p") or enc.pix_fmt != "yuv420p":
        return f"pixel format {ctx.pix_fmt}"
    if pad != (0, 0):
        return "odd frame size (padded for the encoder)"
    try:
        cfg = AvcConfig.parse(bytes(ctx.extradata or b""))
    except (ValueError, IndexError):
        return "no avcC configuration (Annex B input)"
    if cfg.profile not in H264_PROFILES:
        return f"H.264 profile {cfg.profile}"
    if not cfg.sps or not cfg.pps:
        return "no parameter sets in avcC"
    return None


def _drop_sei(nals: list[bytes]) -> list[bytes]:
    return [n for n in nals if n and n[0] & 0x1F != NAL_SEI]


class GopWriter:
    """The H.264 track of a VideoWriter in GOP-copy mode: copied GOPs and re-encoded runs, one track.

    `frame()` receives every output frame in order with its GOP and whether the engine left it unchanged;
    a GOP is decided when its last frame has arrived (the next GOP starts or the video ends). A GOP that
    turns out to need masks after some unchanged frames re-decodes those from its packets (they are the
    input's frames) so the re-encoded run starts at the GOP's keyframe. Memory: one GOP of packets.
    """

    def __init__(self, container, reader, enc, settings, dst_range, delay: int) -> None:
        self.container, self.reader, self.enc = container, reader, enc
        self.time_base = reader.time_base
        src = reader.plan.video
        self.cfg = AvcConfig.parse(bytes(src.codec_context.extradata))
        self.sps_id = self.cfg.free_id()
        self.dst_range = dst_range
        self.delay = int(delay)  # C: dts = j-th smallest pts of the segment - C
        self.stream = container.add_stream_from_template(src)
        self._extradata: bytes | None = None
        x264_sps, x264_pps = self._probe_parameter_sets()
        merged = AvcConfig(self.cfg.profile, self.cfg.compat, self.cfg.level, self.cfg.nal_len,
                           [*self.cfg.sps, *x264_sps], [*self.cfg.pps, *x264_pps], self.cfg.tail)
        self.stream.codec_context.extradata = merged.build()
        self.run = None  # the open encoder of the current re-encoded run
        self.gop: int | None = None
        self.gop_pts: list[int] = []  # unchanged frames of the current GOP so far (copy candidates)
        self.copying = False
        self._durations: dict[int, int] = {}
        self.stats = {"gops_copied": 0, "gops_encoded": 0, "frames_copied": 0, "frames_encoded": 0,
                      "runs": 0, "copy_refused": {}}

    # -- encoders
    def _new_encoder(self):
        ctx = av.CodecContext.create(self.enc.codec, "w")
        w, h = self.reader.stored_size
        ctx.width, ctx.height, ctx.pix_fmt = w, h, self.enc.pix_fmt
        ctx.time_base = self.time_base
        rate = self.reader.rate
        if rate.denominator < 100_000:  # as the plain writer does: x264's rate control reads the frame rate
            ctx.framerate = rate
        ctx.thread_count = self.enc.threads
        ctx.flags |= 1 << 22  # AV_CODEC_FLAG_GLOBAL_HEADER: parameter sets out of band (in the avcC)
        src = self.reader.plan.video.codec_context
        for attr in ("color_primaries", "color_trc", "colorspace", "color_range"):
            try:
                setattr(ctx, attr, getattr(src, attr))
            except Exception:
                pass
        params = f"sps-id={self.sps_id}"
        extra = dict(self.enc.options)
        if "x264-params" in extra:
            params = extra.pop("x264-params") + ":" + params
        ctx.options = {"preset": self.enc.preset or "veryfast", "crf": str(self.enc.crf), **extra,
                       "profile": H264_PROFILES[self.cfg.profile], "x264-params": params}
        ctx.open()
        return ctx

    def _probe_parameter_sets(self) -> tuple[list[bytes], list[bytes]]:
        ctx = self._new_encoder()
        nals = split_annexb(bytes(ctx.extradata or b""))
        sps = [n for n in nals if n[0] & 0x1F == NAL_SPS]
        pps = [n for n in nals if n[0] & 0x1F == NAL_PPS]
        if not sps or not pps or {parameter_set_id(n) for n in sps + pps} != {self.sps_id}:
            raise RuntimeError("x264 did not produce parameter sets under the requested id")
        self._extradata = bytes(ctx.extradata)
        self._spare = ctx  # opened, nothing encoded yet: the first run's encoder (an x264 start costs ~0.1 s)
        return sps, pps

    # -- frames in
    def frame(self, rgb_stored, pts: int, duration: int, gop: int | None, unchanged: bool) -> None:
        if gop != self.gop or gop is None:
            self._close_gop()
            self.gop, self.gop_pts = gop, []
            self.copying = gop is not None
        self._durations[pts] = duration
        g = self.reader.gops.get(gop) if gop is not None else None
        if self.copying and (g is None or g.oversized):  # too long to buffer: encode it as it comes
            self._encode_input_frames(self.gop_pts)
            self.copying = False
        if self.copying and unchanged:
            self.gop_pts.append(pts)
            return
        if self.copying:  # masks start inside a GOP that looked copyable: re-encode it from its keyframe
            self._encode_input_frames(self.gop_pts)
            self.copying = False
        self._encode_rgb(rgb_stored, pts)

    def finish(self) -> None:
        self._close_gop()
        self._end_run()

    # -- internals
    def _close_gop(self) -> None:
        if self.gop is None or not self.copying:
            if self.gop is not None:
                self.stats["gops_encoded"] += 1
            self.reader.gops.pop(self.gop, None)
            self.gop, self.copying = None, False
            return
        g = self.reader.gops.pop(self.gop, None)
        why = self._refuse(g)
        if why is not None:
            self.stats["copy_refused"][why] = self.stats["copy_refused"].get(why, 0) + 1
            self.stats["gops_encoded"] += 1
            self._encode_input_frames(self.gop_pts, g)
        else:
            self._end_run()
            self._mux_copy(g)
            self.stats["gops_copied"] += 1
            self.stats["frames_copied"] += len(g.pts)
        self.gop, self.copying, self.gop_pts = None, False, []

    def _refuse(self, g: Gop | None) -> str | None:
        if g is None or not g.closed:
            return "gop not complete"
        if g.oversized:
            return "gop too large to buffer"
        if sorted(g.pts) != sorted(self.gop_pts) or len(g.packets) != len(g.pts):
            return "frames and packets differ"
        if g.packets[0].pts != min(g.pts):
            return "leading pictures (open GOP)"
        order = sorted(g.pts)
        if any(order[j] - self.delay > p.pts for j, p in enumerate(g.packets)):
            return "reordering deeper than the track's delay"
        return None

    def _mux_copy(self, g: Gop) -> None:
        order = sorted(g.pts)
        for j, p in enumerate(g.packets):
            out = av.Packet(join_avcc(_drop_sei(split_avcc(bytes(p), self.cfg.nal_len)), self.cfg.nal_len))
            out.pts, out.dts = p.pts, order[j] - self.delay
            out.duration = self._durations.pop(p.pts, None) or p.duration or 0
            out.is_keyframe = bool(p.is_keyframe)
            out.time_base = self.time_base
            out.stream = self.stream
            self.container.mux_one(out)

    def _encode_input_frames(self, wanted: list[int], g: Gop | None = None) -> None:
        """Encode the input's own frames with these pts (unchanged frames of this GOP), re-decoded."""
        if not wanted:
            return
        g = g if g is not None else self.reader.gops.get(self.gop)
        if g is None:
            raise RuntimeError("GOP packets are gone: cannot re-encode its unchanged frames")
        dec = av.CodecContext.create(self.reader.plan.video.codec_context.name, "r")
        dec.extradata = bytes(self.reader.plan.video.codec_context.extradata)
        got: dict[int, av.VideoFrame] = {}
        want = set(wanted)
        for p in list(g.packets):
            for f in dec.decode(p):
                if f.pts in want:
                    got[f.pts] = f
        for f in dec.decode(None):
            if f.pts in want:
                got[f.pts] = f
        missing = want - got.keys()
        if missing:
            raise RuntimeError(f"{len(missing)} unchanged frames could not be re-decoded for re-encoding")
        for pts in sorted(want):
            self._encode_frame(got[pts], pts)

    def _encode_rgb(self, rgb_stored, pts: int) -> None:
        frame = av.VideoFrame.from_ndarray(rgb_stored, format="rgb24")
        self._encode_frame(frame, pts)

    def _encode_frame(self, frame: av.VideoFrame, pts: int) -> None:
        if self.run is None:
            self.run, self._spare = self._spare or self._new_encoder(), None
            self.fed: deque[int] = deque()  # pts fed to the run, in order: its packets' dts, in decode order
            if bytes(self.run.extradata) != self._extradata:
                raise RuntimeError("x264 parameter sets changed between runs")
            self.stats["runs"] += 1
        frame = frame.reformat(format=self.enc.pix_fmt, dst_color_range=self.dst_range)
        frame.pts = pts
        frame.time_base = self.time_base
        self.stats["frames_encoded"] += 1
        self.fed.append(pts)
        self._mux_encoded(self.run.encode(frame))

    def _mux_encoded(self, packets) -> None:
        for p in packets:
            dts = self.fed.popleft() - self.delay  # the j-th packet: the j-th smallest pts of the run - C
            if dts > p.pts:  # B-frame reordering deeper than C (cannot happen at a constant frame rate)
                raise RuntimeError("re-encoded run reorders frames deeper than the track's dts delay")
            out = av.Packet(join_avcc(_drop_sei(split_annexb(bytes(p))), self.cfg.nal_len))
            out.pts, out.dts = p.pts, dts
            out.duration = self._durations.pop(p.pts, None) or 0
            out.is_keyframe = bool(p.is_keyframe)
            out.time_base = self.time_base
            out.stream = self.stream
            self.container.mux_one(out)

    def _end_run(self) -> None:
        if self.run is not None:
            self._mux_encoded(self.run.encode(None))
            self.run = None
