"""One clip through `anon anonymize` (video file), the WebSocket stream and `anon validate`: the same masks.

All three run the frame engine (anon_core/video/session.py). The frames each path's engine sees are made identical
(the stream's JPEGs are decoded first; the video file is lossless PNG-in-MOV of exactly those frames; validation
reads them as PNGs), and every call of `Anonymizer.mask` is recorded with its MaskContext, so the comparison is of
the boxes masked per frame, before any encoder touches the pixels.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
from collections import defaultdict
from fractions import Fraction

import cv2
import numpy as np
import pytest
from PIL import Image

from anon_core.pipeline import Anonymizer
from tests.video_helpers import background, face_patch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")

KEY = "three-paths-key-0123456789"
FPS, N, SIZE = 12, 30, (320, 240)
SETS = ["policy=faces", "detectors.face.params.scales=[1.0]", "detectors.face.params.max_side=640"]


def _frames() -> list[np.ndarray]:
    """A face crossing the frame, a few of its frames blurred hard (candidates only) and one without it (a gap);
    late in the clip a second face that is only ever blurred (a weak track: candidates on consecutive frames)."""
    w, h = SIZE
    bg = background(w, h)
    face = face_patch(72)
    blurred = cv2.GaussianBlur(face, (0, 0), 6)
    weak = cv2.GaussianBlur(face, (0, 0), 5)  # scores ~0.45: below the face threshold, above the candidate score
    out = []
    for i in range(N):
        img = bg.copy()
        if i != 17:
            x, y = 10 + 7 * i, 60 + (i % 5) * 3
            img[y:y + 72, x:x + 72] = face if i not in (9, 10, 11) else blurred
        if 20 <= i < 28:
            img[150:222, 230:302] = weak
        out.append(img)
    return out


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, enc = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return enc.tobytes()


def _as_server_sees(jpeg: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _lossless_mov(path, frames: list[np.ndarray]) -> None:
    import av

    with av.open(str(path), "w", format="mov") as c:
        s = c.add_stream("png", rate=FPS)
        s.width, s.height, s.pix_fmt = SIZE[0], SIZE[1], "rgb24"
        s.time_base = Fraction(1, FPS)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _mot(root, frames: list[np.ndarray]) -> None:
    seq = root / "face_video" / "clip"
    (seq / "img1").mkdir(parents=True)
    (seq / "gt").mkdir()
    lines = []
    for i, f in enumerate(frames):
        Image.fromarray(f).save(seq / "img1" / f"{i + 1:06d}.png")
        if i != 17:
            x, y = 10 + 7 * i, 60 + (i % 5) * 3
            lines.append(f"{i + 1},1,{x + 12},{y + 8},48,56,1,1,1")
    (seq / "gt" / "gt.txt").write_text("\n".join(lines) + "\n")
    (seq / "seqinfo.ini").write_text(f"[Sequence]\nname=clip\nimDir=img1\nframeRate={FPS}\nseqLength={N}\n"
                                     f"imWidth={SIZE[0]}\nimHeight={SIZE[1]}\nimExt=.png\n")


@pytest.fixture
def recorded(monkeypatch):
    """Every Anonymizer.mask call, by path (MaskContext.kind) and frame index: the boxes masked."""
    calls: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    lock = threading.Lock()
    real = Anonymizer.mask

    def mask(self, frame, dets, ctx=None, index=0):
        if ctx is not None and ctx.kind in ("video", "stream", "validate"):
            with lock:
                assert index not in calls[ctx.kind], f"{ctx.kind} masked frame {index} twice"
                calls[ctx.kind][index] = np.column_stack([dets.xyxy, dets.scores]).astype(np.float64)
        return real(self, frame, dets, ctx, index)

    monkeypatch.setattr(Anonymizer, "mask", mask)
    return calls


def _serve():
    import uvicorn

    from jobs.serve import ServiceSettings, create_app

    app = create_app(ServiceSettings(api_keys=[KEY], config_sets=list(SETS), workers=1, ws_idle_s=60,
                                     request_timeout_s=120))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws_max_size=16 << 20, ws_ping_timeout=None))
    th = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    deadline = time.monotonic() + 180
    while not srv.started:
        assert th.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    return srv, th, sock, f"ws://127.0.0.1:{sock.getsockname()[1]}"


def test_file_stream_and_validate_mask_the_same(tmp_path, recorded):
    from jobs.cli import main
    from jobs.config import load_config
    from jobs.service.client import stream_frames

    jpegs = [_jpeg(f) for f in _frames()]
    frames = [_as_server_sees(j) for j in jpegs]  # what the stream's engine sees; the other two get the same
    video = load_config(SETS).video

    # 1. anon anonymize on a (lossless) video file
    (tmp_path / "in").mkdir()
    _lossless_mov(tmp_path / "in" / "clip.mov", frames)
    assert main(["anonymize", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--no-progress",
                 *[a for s in SETS for a in ("--set", s)]]) == 0
    assert (tmp_path / "out" / "clip.mov").exists()

    # 2. the WebSocket stream, with the video settings' look-ahead (the stream defaults to none: lowest latency)
    srv, th, sock, ws = _serve()
    try:
        res = asyncio.run(stream_frames(ws, KEY, jpegs, {"backpressure": "queue", "queue": 4, "fps": FPS,
                                                         "lookahead_s": video.lookahead_s}))
    finally:
        srv.should_exit = True
        th.join(timeout=15)
        sock.close()
    assert len(res.frames) == N and not res.errors

    # 3. anon validate on the same frames as a MOT sequence
    _mot(tmp_path / "data", frames)
    out = tmp_path / "val"
    with io.StringIO() as buf:
        from contextlib import redirect_stdout

        with redirect_stdout(buf):
            assert main(["validate", "--data", str(tmp_path / "data" / "face_video"), "-o", str(out), "--no-mlflow",
                         *[a for s in SETS for a in ("--set", s)]]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["video"]["tracked"]["n_frames"] == N

    file_, stream, val = (recorded[k] for k in ("video", "stream", "validate"))
    assert file_, "the file path masked nothing: the clip does not exercise the engine"
    assert 17 in file_, "the frame without a face is masked by gap fill (tracking is in play)"
    # the face that never passes the threshold is masked as a weak track (candidates, weak_track_hits)
    assert all(len(file_.get(i, ())) == 2 for i in range(20, 28)), {i: len(file_.get(i, ())) for i in range(N)}
    for i in range(N):
        a = file_.get(i, np.zeros((0, 5)))
        for name, other in (("stream", stream), ("validate", val)):
            b = other.get(i, np.zeros((0, 5)))
            assert a.shape == b.shape, f"frame {i}: file path masked {len(a)} boxes, {name} {len(b)}"
            # same frames, same engine; batch sizes differ (8 / 1 / 8), so allow float noise from the network
            np.testing.assert_allclose(a, b, atol=0.05, err_msg=f"frame {i}: {name} differs from the file path")
