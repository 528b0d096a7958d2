"""Bad-input corpus, generated (nothing checked in): broken, hostile and unusual media files.

`build_corpus(root)` writes every case under `root` and returns what each must produce through
`anon_core.runner.run`: a correct output (`ok`), a failed audit row with one of the listed error
codes (`fail`), or either (`either`: e.g. a bit-flipped JPEG may still decode to a damaged picture,
which is then anonymized like any other). tests/test_bad_inputs.py runs it and checks every row.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from tests.video_helpers import background, face_patch, make_clip

READ_ERRORS = ("corrupt", "unsupported")


@dataclass
class Case:
    expect: str  # ok | fail | either
    codes: tuple[str, ...] = READ_ERRORS  # acceptable error codes when it fails
    face: tuple[int, int, int, int] | None = None  # a known face box (x1, y1, x2, y2) that must be masked
    note: str = ""
    extra: dict = field(default_factory=dict)


# -- images

def face_image(w: int = 192, h: int = 160, face: int = 96) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    img = background(w, h)
    x, y = (w - face) // 2, (h - face) // 2
    img[y:y + face, x:x + face] = face_patch(face)
    return img, (x, y, x + face, y + face)


def encode_image(img: np.ndarray | Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that announces w x h RGB and carries one tiny (invalid) IDAT: decoders must refuse on the header."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) \
        + _png_chunk(b"IEND", b"")


def png_zlib_bomb(w: int, h: int, rows_per_block: int = 100) -> bytes:
    """A *valid* grey PNG of w x h black pixels, a few hundred kB: a real decompression bomb.

    Built without compressing w*h bytes: one raw-deflate block of `rows_per_block` zero rows ends with a
    full flush (byte-aligned, no back-references across it), so the same bytes repeat to any length.
    """
    row = w + 1  # filter byte + pixels
    assert h % rows_per_block == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(row * rows_per_block)) + c.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)  # final empty block
    total = row * h
    adler = ((total % 65521) << 16) | 1  # adler32 of `total` zero bytes
    stream = b"\x78\xda" + block * (h // rows_per_block) + end + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", stream) + _png_chunk(b"IEND", b"")


def jpeg_with_size(w: int, h: int) -> bytes:
    """A small real JPEG whose SOF header is patched to announce w x h (scan data far too short)."""
    data = bytearray(encode_image(np.full((16, 16, 3), 128, np.uint8), "JPEG"))
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def bitflip(data: bytes, start_frac: float = 0.3, step: int = 97, seed: int = 0) -> bytes:
    """Flip bits through the payload (headers kept, so the file still opens and fails, if at all, mid-way)."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for i in range(int(len(out) * start_frac), len(out), step):
        out[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def rand(n: int, seed: int, prefix: bytes = b"") -> bytes:
    return prefix + np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# -- video / audio

def encode_video(path: str, fmt: str, codec: str, pix_fmt: str, size: tuple[int, int], n: int = 8, fps: int = 12,
                 options: dict | None = None, color: dict | None = None, audio: bool = False,
                 video: bool = True) -> None:
    """A short clip with any codec / pixel format / size (make_clip is 8-bit 4:2:0 with even sizes only)."""
    w, h = size
    with av.open(path, "w", format={"mp4": "mp4", "mkv": "matroska", "webm": "webm"}[fmt]) as oc:
        vs = None
        if video:
            vs = oc.add_stream(codec, rate=fps, options=options or {})
            vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
            for k, v in (color or {}).items():
                setattr(vs.codec_context, k, v)
        aus = None
        if audio:
            aus = oc.add_stream("aac", rate=48000)
            aus.layout = "mono"
        if vs is not None:
            bg = background(w, h)
            for i in range(n):
                img = np.roll(bg, 3 * i, axis=1)
                f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(format=pix_fmt)
                f.pts = i
                f.time_base = Fraction(1, fps)
                for p in vs.encode(f):
                    oc.mux(p)
            for p in vs.encode(None):
                oc.mux(p)
        if aus is not None:
            sr, secs = 48000, n / fps
            tone = (0.2 * np.sin(2 * np.pi * 330 * np.arange(int(sr * secs)) / sr)).astype(np.float32)
            step = aus.codec_context.frame_size or 1024
            for k in range(0, len(tone), step):
                af = av.AudioFrame.from_ndarray(tone[None, k:k + step], format="flt", layout="mono")
                af.sample_rate, af.pts, af.time_base = sr, k, Fraction(1, sr)
                for p in aus.encode(af):
                    oc.mux(p)
            for p in aus.encode(None):
                oc.mux(p)


def mp4_atoms(data: bytes) -> list[tuple[bytes, int, int]]:
    """Top-level boxes: (type, offset, size)."""
    out, i = [], 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        if size < 8:
            break
        out.append((kind, i, size))
        i += size
    return out


def mp4_absurd_duration(data: bytes) -> bytes:
    """Patch every movie/track/media header (version 0) to announce a ~50-day duration."""
    out = bytearray(data)
    for kind, dur_off in ((b"mvhd", 16), (b"tkhd", 20), (b"mdhd", 16)):
        start = 0
        while (i := out.find(kind, start)) >= 0:
            body = i + 4  # version byte
            if out[body] == 0:
                out[body + dur_off:body + dur_off + 4] = struct.pack(">I", 0xFFFFFF00)
            start = i + 4
    return bytes(out)


def mkv_absurd_duration(data: bytes) -> bytes:
    """Matroska Segment Info Duration (0x4489, float) patched to ~30 years."""
    out = bytearray(data)
    i = out.find(b"\x44\x89")
    if i < 0:
        return bytes(out)
    size = out[i + 2] & 0x7F  # 1-byte EBML size (0x84 / 0x88)
    if size == 8:
        out[i + 3:i + 11] = struct.pack(">d", 1e12)
    elif size == 4:
        out[i + 3:i + 7] = struct.pack(">f", 1e12)
    return bytes(out)


def drop_atom(data: bytes, kind: bytes) -> bytes:
    return b"".join(data[o:o + s] for k, o, s in mp4_atoms(data) if k != kind)


def tone_wav(seconds: float = 1.0, sr: int = 16000) -> bytes:
    buf = io.BytesIO()
    x = (0.2 * np.sin(2 * np.pi * 220 * np.arange(int(sr * seconds)) / sr) * 32767).astype("<i2")
    hdr = b"RIFF" + struct.pack("<I", 36 + 2 * len(x)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, sr, 2 * sr, 2,
                                                                                   16)
    buf.write(hdr + b"data" + struct.pack("<I", 2 * len(x)) + x.tobytes())
    return buf.getvalue()


def mp3_tone(path: str, seconds: float = 1.0, sr: int = 44100) -> None:
    with av.open(path, "w", format="mp3") as oc:
        s = oc.add_stream("libmp3lame", rate=sr)
        s.layout = "mono"
        x = (0.2 * np.sin(2 * np.pi * 220 * np.arange(int(sr * seconds)) / sr)).astype(np.float32)
        f = av.AudioFrame.from_ndarray(x[None], format="flt", layout="mono")
        f.sample_rate, f.pts, f.time_base = sr, 0, Fraction(1, sr)
        for p in s.encode(f):
            oc.mux(p)
        for p in s.encode(None):
            oc.mux(p)


# -- the corpus

def build_corpus(root: Path, tiny_files: int = 40) -> dict[str, Case]:
    """Write the corpus under root; returns relative path -> expected outcome."""
    cases: dict[str, Case] = {}

    def put(rel: str, data: bytes, case: Case) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        cases[rel] = case

    # images
    img, box = face_image()
    jpg, png = encode_image(img, "JPEG", quality=92), encode_image(img, "PNG")
    put("img/good.jpg", jpg, Case("ok", face=box))
    put("img/good.png", png, Case("ok", face=box))
    put("img/truncated.jpg", jpg[: len(jpg) // 2], Case("fail"))
    put("img/truncated.png", png[: len(png) // 2], Case("fail"))
    put("img/header_only.jpg", jpg[:300], Case("fail"))
    put("img/bitflip.jpg", bitflip(jpg), Case("either", note="may decode to a damaged picture"))
    put("img/bitflip.png", bitflip(png), Case("either"))
    put("img/random.jpg", rand(4000, 1), Case("fail", note="sniffs as MP3 (frame sync), fails there"))
    put("img/random.png", rand(4000, 2), Case("fail"))
    put("img/random_magic.jpg", rand(4000, 3, b"\xff\xd8\xff\xe0"), Case("fail"))
    put("img/random_magic.png", rand(4000, 4, b"\x89PNG\r\n\x1a\n"), Case("fail"))
    put("img/empty.jpg", b"", Case("fail"))
    put("img/empty.png", b"", Case("fail"))
    put("img/header_60000x60000.png", png_header_only(60000, 60000), Case("fail", ("too_large",)))
    put("img/header_60000x60000.jpg", jpeg_with_size(60000, 60000), Case("fail", ("too_large",)))
    put("img/bomb_20000x10000.png", png_zlib_bomb(20000, 10000), Case("fail", ("too_large",),
                                                                        note="valid PNG, 200 Mpx of zeros"))
    put("img/bomb_20000x10000.jpg", jpeg_with_size(20000, 10000), Case("fail", ("too_large",)))
    put("img/zero_size.png", png_header_only(0, 0), Case("fail"))
    apng = io.BytesIO()
    Image.fromarray(img).save(apng, "PNG", save_all=True, append_images=[Image.fromarray(img[::-1].copy())])
    put("img/animated.png", apng.getvalue(), Case("fail", ("unsupported",), note="APNG: frames 2+ not analysed"))
    put("img/png_named.jpg", png, Case("ok", face=box, note="read by content"))
    put("img/jpeg_named.mp4", jpg, Case("ok", face=box, note="read by content"))
    put("img/cmyk.jpg", encode_image(Image.fromarray(img).convert("CMYK"), "JPEG"), Case("ok"))
    put("img/gray16.png", encode_image((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 13), "PNG"), Case("ok"))
    put("img/odd_1x1.png", encode_image(np.zeros((1, 1, 3), np.uint8), "PNG"), Case("ok"))
    put("img/odd_3x7.jpg", encode_image(np.full((7, 3, 3), 200, np.uint8), "JPEG"), Case("ok"))
    put("img/strip_1x2000.png", encode_image(np.zeros((1, 2000, 3), np.uint8), "PNG"), Case("ok"))

    # many tiny files: valid 1..6 px images and 3-byte stubs
    rng = np.random.default_rng(7)
    for i in range(tiny_files):
        if i % 5 == 4:
            put(f"tiny/{i:03d}.jpg", b"\xff\xd8\xff", Case("fail"))
        else:
            s = int(rng.integers(1, 7))
            arr = rng.integers(0, 256, (s, s + 1, 3), dtype=np.uint8)
            put(f"tiny/{i:03d}.png" if i % 2 else f"tiny/{i:03d}.jpg", encode_image(arr, "PNG" if i % 2 else "JPEG"),
                Case("ok"))

    # video
    tmp = root.parent / (root.name + "-src")  # sources for the derived cases, outside the corpus
    tmp.mkdir(parents=True, exist_ok=True)
    size, n = (160, 120), 12
    clip = make_clip(str(tmp / "good.mp4"), "mp4", n_frames=n, size=size, face=56, fps=12)
    mp4 = Path(clip.path).read_bytes()
    mid = len(clip.boxes) // 2
    face_box = tuple(int(v) for v in clip.boxes[mid][0])
    put("vid/good.mp4", mp4, Case("ok", face=face_box, extra={"frame": mid}))
    webm = Path(make_clip(str(tmp / "good.webm"), "webm", n_frames=n, size=size, face=56, fps=12).path).read_bytes()
    put("vid/good.webm", webm, Case("ok"))
    put("vid/truncated.mp4", mp4[: int(len(mp4) * 0.6)], Case("fail", ("corrupt",)))
    put("vid/truncated.webm", webm[: int(len(webm) * 0.6)], Case("fail", ("corrupt",)))
    # a cut that loses only the last frames is within the decoder check's slack (3 frames): published as decoded
    put("vid/cut_last_frames.webm", webm[: int(len(webm) * 0.8)], Case("either", ("corrupt",)))
    put("vid/bitflip.mp4", bitflip(mp4, 0.2, 61), Case("either"))
    put("vid/bitflip.webm", bitflip(webm, 0.3, 61), Case("either"))
    put("vid/random.mp4", rand(5000, 5), Case("fail", ("unsupported",)))
    put("vid/random_ftyp.mp4", rand(5000, 6, b"\x00\x00\x00\x18ftypmp42"), Case("fail"))
    put("vid/random_ebml.webm", rand(5000, 7, b"\x1a\x45\xdf\xa3"), Case("fail"))
    put("vid/empty.mp4", b"", Case("fail"))
    put("vid/empty.webm", b"", Case("fail"))
    put("vid/no_moov.mp4", drop_atom(mp4, b"moov"), Case("fail"))
    put("vid/absurd_duration.mp4", mp4_absurd_duration(mp4), Case("either", ("corrupt",),
                                                                  note="header says ~50 days, 1 s of frames"))
    put("vid/absurd_duration.webm", mkv_absurd_duration(webm), Case("either", ("corrupt",)))
    put("vid/mp4_named.jpg", mp4, Case("ok", note="read by content"))
    rot = make_clip(str(tmp / "rot.mp4"), "mp4", n_frames=n, size=size, face=56, fps=12, rotation=90)
    put("vid/rotated90.mp4", Path(rot.path).read_bytes(), Case("ok"))
    vfr = make_clip(str(tmp / "vfr.mp4"), "mp4", n_frames=n, size=size, face=56, fps=12, vfr=True)
    put("vid/vfr.mp4", Path(vfr.path).read_bytes(), Case("ok"))
    specs = {
        "vid/h264_10bit.mp4": ("mp4", "libx264", "yuv420p10le", size, {"preset": "ultrafast"}, None),
        "vid/hevc_hdr10_10bit.mp4": ("mp4", "libx265", "yuv420p10le", size,
                                     {"preset": "ultrafast", "x265-params": "log-level=error"},
                                     {"color_primaries": 9, "color_trc": 16, "colorspace": 9}),
        "vid/odd_161x121.mp4": ("mp4", "libx264", "yuv444p", (161, 121), {"preset": "ultrafast"}, None),
        "vid/odd_161x121.mkv": ("mkv", "libx264", "yuv444p", (161, 121), {"preset": "ultrafast"}, None),
        "vid/video_only.mp4": ("mp4", "libx264", "yuv420p", size, {"preset": "ultrafast"}, None),
    }
    for rel, (fmt, codec, pix, sz, opts, color) in specs.items():
        p = tmp / rel.replace("/", "_")
        encode_video(str(p), fmt, codec, pix, sz, options=opts, color=color)
        put(rel, p.read_bytes(), Case("ok"))
    encode_video(str(tmp / "audio_only.mp4"), "mp4", "", "", size, video=False, audio=True)
    put("vid/audio_only.mp4", (tmp / "audio_only.mp4").read_bytes(),
        Case("either", ("unsupported",), note="an MP4 without a video track"))

    # audio
    wav = tone_wav()
    put("aud/good.wav", wav, Case("ok"))
    put("aud/truncated.wav", wav[: len(wav) // 2], Case("either", note="PCM decodes up to the cut"))
    put("aud/header_only.wav", wav[:44], Case("fail"))
    put("aud/random_riff.wav", rand(3000, 8, b"RIFF\x00\x10\x00\x00WAVE"), Case("fail"))
    put("aud/empty.wav", b"", Case("fail"))
    mp3_tone(str(tmp / "a.mp3"))
    mp3 = (tmp / "a.mp3").read_bytes()
    put("aud/bitflip.mp3", bitflip(mp3, 0.3, 53), Case("either"))
    put("aud/random_id3.mp3", rand(3000, 9, b"ID3"), Case("fail"))
    put("aud/wav_named.mp3", wav, Case("ok", note="read by content"))
    return cases
