"""WebSocket continuous mode (`/v1/stream`): per-connection tracking, backpressure, per-frame latency.

The wire protocol is documented in `jobs/serve.py`'s module docstring.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field

import cv2
import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from anon_core.pipeline import Anonymizer
from anon_core.video.session import FrameSession, MaskedFrame, Windows

log = logging.getLogger("anon.service.stream")

TS_BYTES = 8


class FrameError(Exception):
    pass


@dataclass
class StreamOptions:
    policy: str
    backpressure: str = "drop"  # drop | queue
    queue: int = 4
    fps: float = 25.0
    lookahead_s: float = 0.0  # > 0 adds that much latency but lets masks start before a face is first detected
    trail_s: float | None = None  # None: the video settings' trail_s
    quality: int = 85


def encode_frame(ts: int, payload: bytes) -> bytes:
    return int(ts).to_bytes(TS_BYTES, "little", signed=True) + payload


def decode_frame(message: bytes) -> tuple[int, bytes]:
    if len(message) <= TS_BYTES:
        raise FrameError("binary message shorter than the 8-byte timestamp header plus a JPEG")
    return int.from_bytes(message[:TS_BYTES], "little", signed=True), message[TS_BYTES:]


@dataclass
class StreamLimits:
    """Per-connection limits of the protocol layer, all checked before a frame is decoded."""

    max_pixels: int = 8_294_400  # one frame, from its JPEG header
    decoded_budget_bytes: int = 1 << 30  # decoded RGB a connection may hold: the frame plus look-ahead frames
    read_ahead_bytes: int = 32 << 20  # queue mode: encoded frames read ahead of processing


def frame_dimensions(jpeg: bytes) -> tuple[int, int]:
    """(width, height) from the JPEG's frame header; no pixel is decoded (Pillow's open is lazy)."""
    import io
    import warnings

    from PIL import Image

    if jpeg[:3] != b"\xff\xd8\xff":
        raise FrameError("frame is not a JPEG")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(jpeg), formats=["JPEG"]) as im:
                return im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FrameError("frame header declares more pixels than Pillow's bomb limit: above the pixel limit") \
            from exc
    except Exception as exc:  # Pillow's parse errors on a damaged header
        raise FrameError("corrupt JPEG frame header") from exc


def check_frame(jpeg: bytes, limits: StreamLimits, held_frames: int) -> None:
    """Refuse a frame from its header alone: above the pixel limit, or above what the connection may hold
    decoded (this frame and `held_frames` more kept for look-ahead)."""
    w, h = frame_dimensions(jpeg)
    if w * h > limits.max_pixels:
        raise FrameError(f"frame is {w}x{h}: above the pixel limit of {limits.max_pixels}")
    if w * h * 3 * (held_frames + 1) > limits.decoded_budget_bytes:
        raise FrameError(f"frame is {w}x{h}: with {held_frames} frames held for look-ahead this connection would "
                         f"hold more than {limits.decoded_budget_bytes} decoded bytes")


class FrameWorker:
    """One connection's frames, in order: decode -> the frame engine (detect, track, mask) -> JPEG.

    Runs in a worker thread, one frame at a time per connection, so the engine needs no lock.
    The engine (`anon_core.video.session.FrameSession`) is the one the video file path runs: weak tracks,
    candidates, detect_every_k, on_analysis_error and the residual check apply here too.
    """

    def __init__(self, anonymizer: Anonymizer, opts: StreamOptions, max_pixels: int) -> None:
        self.anonymizer = anonymizer
        self.opts = opts
        self.max_pixels = max_pixels
        self.video = anonymizer.config.video
        self.session: FrameSession | None = None
        self.size: tuple[int, int] | None = None

    def _new_session(self, size: tuple[int, int]) -> FrameSession:
        v, o = self.video, self.opts
        look = max(0.0, o.lookahead_s)
        trail = v.trail_s if o.trail_s is None else o.trail_s
        # Without look-ahead a gap can only be bridged by trailing fill, never interpolated.
        windows = Windows(lookahead_s=look, lead_s=min(v.lead_s, look), trail_s=trail,
                          max_gap_s=min(v.max_gap_s, look))
        return FrameSession(self.anonymizer, o.fps, size, kind="stream", windows=windows)

    def process(self, ts: int, jpeg: bytes, t_recv: float) -> list[tuple[int, bytes, float]]:
        buf = np.frombuffer(jpeg, np.uint8)
        if jpeg[:3] != b"\xff\xd8\xff":
            raise FrameError("frame is not a JPEG")
        if jpeg.rstrip(b"\0")[-2:] != b"\xff\xd9":
            raise FrameError("truncated JPEG frame (no end-of-image marker)")  # libjpeg would pad it silently
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if bgr is None:
            raise FrameError("corrupt JPEG frame")
        h, w = bgr.shape[:2]
        if h * w > self.max_pixels:
            raise FrameError(f"frame is {w}x{h}: above the pixel limit")
        out: list[tuple[int, bytes, float]] = []
        if self.size != (w, h):  # a new resolution starts a new tracking session
            out += self.flush()
            self.session, self.size = self._new_session((w, h)), (w, h)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        assert self.session is not None
        return out + self._encode(self.session.push([rgb], metas=[(ts, t_recv)]))

    def flush(self) -> list[tuple[int, bytes, float]]:
        if self.session is None:
            return []
        session, self.session, self.size = self.session, None, None
        return self._encode(session.flush())

    def _encode(self, frames: list[MaskedFrame]) -> list[tuple[int, bytes, float]]:
        out = []
        for f in frames:
            ts, t_recv = f.meta
            ok, enc = cv2.imencode(".jpg", cv2.cvtColor(f.rgb, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, int(self.opts.quality)])
            if not ok:  # fail closed: the frame is reported as an error, never sent unmasked
                raise FrameError("JPEG encoding failed")
            out.append((ts, enc.tobytes(), t_recv))
        return out


@dataclass
class _Item:
    ts: int
    data: bytes
    t_recv: float


@dataclass
class StreamStats:
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    errors: int = 0
    latency_ms: list[float] = field(default_factory=list)
    process_ms: list[float] = field(default_factory=list)

    def message(self, opts: StreamOptions, final: bool) -> dict:
        return {"type": "stats", "final": final, "frames_in": self.frames_in, "frames_out": self.frames_out,
                "dropped": self.dropped, "errors": self.errors, "latency_ms": _summary(self.latency_ms),
                "process_ms": _summary(self.process_ms), "policy": opts.policy, "backpressure": opts.backpressure,
                "queue": opts.queue, "lookahead_s": opts.lookahead_s}


def _summary(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "max": None, "mean": None}
    a = np.asarray(values)
    return {"p50": round(float(np.percentile(a, 50)), 2), "p95": round(float(np.percentile(a, 95)), 2),
            "max": round(float(a.max()), 2), "mean": round(float(a.mean()), 2)}


async def run_stream(ws: WebSocket, worker: FrameWorker, opts: StreamOptions, pool: Executor, metrics,
                     idle_timeout_s: float, limits: StreamLimits | None = None) -> None:
    """Reader task fills a bounded inbox; the processor drains it in order and sends results back.

    queue mode: the reader keeps reading (so the server's WebSocket layer keeps answering the client's pings
    and control messages) while the inbox holds up to `queue` frames or up to `read_ahead_bytes` of encoded
    frames, whichever is more; only beyond that does it stop reading and let TCP push back.
    """
    limits = limits or StreamLimits()
    held = int(round(max(0.0, opts.lookahead_s) * opts.fps)) + 1  # frames the tracker may keep decoded
    loop = asyncio.get_running_loop()
    inbox: deque[_Item] = deque()
    pending_bytes = {"n": 0}
    cond = asyncio.Condition()
    state = {"closed": False, "aborted": False, "stats": False}
    dropped: list[int] = []
    stats = StreamStats()

    def room(size: int) -> bool:
        return len(inbox) < opts.queue or state["aborted"] or pending_bytes["n"] + size <= limits.read_ahead_bytes

    async def reader() -> None:
        try:
            while True:
                try:
                    msg = await asyncio.wait_for(ws.receive(), idle_timeout_s)
                except TimeoutError:
                    break  # idle: finish what is queued and close
                if msg["type"] == "websocket.disconnect":
                    state["aborted"] = True
                    break
                if msg.get("bytes") is not None:
                    item = _Item(0, msg["bytes"], time.perf_counter())
                    async with cond:
                        if opts.backpressure == "queue":
                            # past the read-ahead, not reading is the backpressure: the client's sends block on TCP
                            await cond.wait_for(functools.partial(room, len(item.data)))
                        else:
                            while len(inbox) >= opts.queue:
                                old = inbox.popleft()
                                pending_bytes["n"] -= len(old.data)
                                dropped.append(_peek_ts(old.data))
                                stats.dropped += 1
                                metrics.ws_frames.labels("dropped").inc()
                        inbox.append(item)
                        pending_bytes["n"] += len(item.data)
                        stats.frames_in += 1
                        cond.notify_all()
                    continue
                try:
                    control = json.loads(msg.get("text") or "")
                except ValueError:
                    control = {}
                kind = control.get("type") if isinstance(control, dict) else None
                async with cond:
                    if kind == "stats":
                        state["stats"] = True
                    elif kind in ("end", "close"):
                        state["closed"] = True
                    cond.notify_all()
                if kind in ("end", "close"):
                    return
        except WebSocketDisconnect:
            state["aborted"] = True
        finally:
            async with cond:
                state["closed"] = True
                cond.notify_all()

    async def send_results(outs) -> None:
        for ts, jpeg, t_recv in outs:
            await ws.send_bytes(encode_frame(ts, jpeg))
            lat = time.perf_counter() - t_recv
            stats.latency_ms.append(lat * 1000)
            stats.frames_out += 1
            metrics.ws_frames.labels("ok").inc()
            metrics.ws_latency.observe(lat)

    async def processor() -> None:
        while True:
            async with cond:
                await cond.wait_for(lambda: inbox or dropped or state["stats"] or state["closed"])
                if state["aborted"]:
                    return
                drops, dropped[:] = list(dropped), []
                item = inbox.popleft() if inbox else None
                if item is not None:
                    pending_bytes["n"] -= len(item.data)
                want_stats, state["stats"] = state["stats"], False
                finished = item is None and state["closed"]
                cond.notify_all()
            if drops:
                await ws.send_text(json.dumps({"type": "dropped", "timestamps": drops}))
            if item is not None:
                t0 = time.perf_counter()
                try:
                    ts, payload = decode_frame(item.data)
                    check_frame(payload, limits, held)  # from the header: nothing is decoded above the limits
                    outs = await loop.run_in_executor(pool, worker.process, ts, payload, item.t_recv)
                except FrameError as exc:
                    outs = []
                    stats.errors += 1
                    metrics.ws_frames.labels("error").inc()
                    await ws.send_text(json.dumps({"type": "error", "timestamp": _peek_ts(item.data),
                                                   "error": str(exc)}))
                except Exception as exc:  # fail closed: the frame is not returned
                    log.exception("stream frame failed")
                    outs = []
                    stats.errors += 1
                    metrics.ws_frames.labels("error").inc()
                    await ws.send_text(json.dumps({"type": "error", "timestamp": _peek_ts(item.data),
                                                   "error": f"internal error: {type(exc).__name__}"}))
                stats.process_ms.append((time.perf_counter() - t0) * 1000)
                await send_results(outs)
            if want_stats:
                await ws.send_text(json.dumps(stats.message(opts, final=False)))
            if finished:
                await send_results(await loop.run_in_executor(pool, worker.flush))
                await ws.send_text(json.dumps(stats.message(opts, final=True)))
                await ws.close(1000)
                return

    read_task = asyncio.create_task(reader())
    try:
        await processor()
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away mid-send
    finally:
        read_task.cancel()
        try:
            await read_task
        except (asyncio.CancelledError, Exception):
            pass


def _peek_ts(data: bytes) -> int | None:
    return int.from_bytes(data[:TS_BYTES], "little", signed=True) if len(data) >= TS_BYTES else None
