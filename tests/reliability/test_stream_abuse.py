"""WebSocket probe classes: decode bombs and decoded-size budgets, pings under queue backpressure, log floods
from refused handshakes, oversized and malformed messages, per-key connection limits, idle connections."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import numpy as np
import pytest

from tests.conftest import ASTRONAUT_FACE
from tests.reliability.conftest import make_settings
from tests.reliability.helpers import AUTH, KEY, OTHER, decode, jpeg, rss_bytes, start_thread_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = make_settings(tmp_path_factory.mktemp("stream") / "tmp", workers=1, ws_max_frame_bytes=2 << 20,
                      ws_idle_s=6.0, ws_max_per_key=3)
    server = start_thread_server(s)
    yield server
    server.stop()


def _frames(astronaut, size, n) -> list[bytes]:
    import cv2

    base = cv2.resize(astronaut, size, interpolation=cv2.INTER_AREA)
    return [jpeg(np.roll(base, i % 7, axis=1), quality=80) for i in range(n)]


async def _session(url: str, messages: list, params: str = "", ping_interval=None, ping_timeout=None,
                   timeout_s: float = 120, headers=AUTH) -> dict:
    """Send `messages` (bytes frames or dict controls), then `end`; collect everything until the server closes."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from jobs.service.stream import decode_frame, encode_frame

    out = {"frames": [], "errors": [], "stats": None, "close": None}
    async with connect(url + "/v1/stream" + params, additional_headers=headers, max_size=64 << 20,
                       ping_interval=ping_interval, ping_timeout=ping_timeout, open_timeout=30) as ws:
        async def send() -> None:
            for i, m in enumerate(messages):
                await ws.send(json.dumps(m) if isinstance(m, dict) else m if isinstance(m, str)
                              else encode_frame(i * 40_000, m) if not m.startswith(b"RAW") else m[3:])
            await ws.send(json.dumps({"type": "end"}))

        async def recv() -> None:
            try:
                async for msg in ws:
                    if isinstance(msg, bytes):
                        out["frames"].append(decode_frame(msg))
                    else:
                        m = json.loads(msg)
                        if m["type"] == "error":
                            out["errors"].append(m)
                        elif m["type"] == "stats" and m.get("final"):
                            out["stats"] = m
            except ConnectionClosed:
                pass

        try:
            await asyncio.wait_for(asyncio.gather(send(), recv()), timeout_s)
        except ConnectionClosed:
            pass
        out["close"] = ws.close_code
    return out


def test_decode_bomb_is_refused_from_the_header(srv, astronaut):
    from tests.reliability.helpers import bomb_jpeg

    bomb = bomb_jpeg(20000, 20000)
    assert len(bomb) < 1000
    good = _frames(astronaut, (160, 120), 1)[0]
    rss0 = rss_bytes()
    t0 = time.monotonic()
    res = asyncio.run(_session(srv.ws, [bomb, good]))
    assert time.monotonic() - t0 < 5
    assert [e["timestamp"] for e in res["errors"]] == [0] and "pixel limit" in res["errors"][0]["error"]
    assert [ts for ts, _ in res["frames"]] == [40_000]  # the connection goes on with the next frame
    assert rss_bytes() - rss0 < 300 << 20


def test_decoded_budget_per_connection(srv, astronaut):
    """Look-ahead keeps frames decoded: 2 s at 240 fps of 1920x1080 would hold 3 GB; refused from the header."""
    import cv2

    big = jpeg(cv2.resize(astronaut, (1920, 1080)), quality=60)
    res = asyncio.run(_session(srv.ws, [big], params="?lookahead_s=2&fps=240"))
    assert len(res["errors"]) == 1 and "decoded bytes" in res["errors"][0]["error"] and not res["frames"]


def test_queue_backpressure_still_answers_pings(srv, astronaut):
    """The client pings every 0.5 s and gives up after 2 s without a pong; the server is far slower than the
    client, so with reading stopped for backpressure the client used to drop the connection (frames lost)."""
    frames = _frames(astronaut, (640, 480), 80)
    res = asyncio.run(_session(srv.ws, frames, params="?backpressure=queue&queue=1", ping_interval=0.5,
                               ping_timeout=2, timeout_s=300))
    assert res["close"] == 1000, res["close"]
    assert [ts for ts, _ in res["frames"]] == [i * 40_000 for i in range(80)]
    assert res["stats"]["frames_out"] == 80 and res["stats"]["dropped"] == 0


def test_refused_handshakes_do_not_flood_the_error_log(srv):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    records: list[logging.LogRecord] = []

    class Grab(logging.Handler):
        def emit(self, record) -> None:
            records.append(record)

    grab = Grab(level=logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "anon.service", "")]
    for lg in loggers:
        lg.addHandler(grab)
    try:
        for _ in range(25):
            with pytest.raises(InvalidStatus) as exc:
                connect(srv.ws + "/v1/stream", open_timeout=10,
                        additional_headers={"Authorization": "Bearer wrong"})
            assert exc.value.response.status_code == 401
        time.sleep(0.3)
    finally:
        for lg in loggers:
            lg.removeHandler(grab)
    records = list({id(r): r for r in records}.values())  # a record reaches several of the loggers above
    errors = [r for r in records if r.levelno >= logging.ERROR]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert errors == [], [r.getMessage() for r in errors]
    assert len(warnings) <= 1, [r.getMessage() for r in warnings]


def test_malformed_messages_are_reported_and_the_stream_goes_on(srv, astronaut):
    good = _frames(astronaut, (320, 240), 1)[0]
    res = asyncio.run(_session(srv.ws, [b"RAW\x01\x02", b"not a jpeg at all", good[: len(good) // 2],
                                        "{not json", {"type": "nonsense"}, good]))
    assert [e["timestamp"] for e in res["errors"]] == [None, 40_000, 80_000], res["errors"]
    assert [ts for ts, _ in res["frames"]] == [5 * 40_000]
    out = decode(res["frames"][0][1])
    x1, y1, x2, y2 = (int(v * s / 512) for v, s in zip(ASTRONAUT_FACE, (320, 240, 320, 240), strict=True))
    ref = decode(good)
    assert np.abs(out[y1:y2, x1:x2].astype(int) - ref[y1:y2, x1:x2].astype(int)).mean() > 10


def test_oversized_message_closes_with_1009(srv):
    res = asyncio.run(_session(srv.ws, [b"\xff\xd8\xff" + b"\0" * (3 << 20)]))
    assert res["close"] == 1009 and not res["frames"]


def test_per_key_connection_limit(srv):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    held = [connect(srv.ws + "/v1/stream", additional_headers=AUTH, open_timeout=10) for _ in range(3)]
    try:
        with pytest.raises(InvalidStatus) as exc:
            connect(srv.ws + "/v1/stream", additional_headers=AUTH, open_timeout=10)
        assert exc.value.response.status_code == 429
        other = connect(srv.ws + "/v1/stream", additional_headers=OTHER, open_timeout=10)  # other keys still in
        other.close()
    finally:
        for ws in held:
            ws.close()
    time.sleep(0.3)
    ws = connect(srv.ws + "/v1/stream", additional_headers=AUTH, open_timeout=10)  # slots come back
    ws.close()


def test_idle_connection_is_closed(srv):
    from websockets.sync.client import connect

    ws = connect(srv.ws + "/v1/stream", additional_headers={"Authorization": f"Bearer {KEY}"}, open_timeout=10)
    t0 = time.monotonic()
    got = []
    try:
        while time.monotonic() - t0 < 15:
            got.append(ws.recv(timeout=15))
    except Exception:
        pass
    assert 5 < time.monotonic() - t0 < 14
    assert any('"final": true' in m or '"final":true' in m for m in got if isinstance(m, str))
