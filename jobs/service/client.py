"""A minimal `/v1/stream` client (tests, benchmarks, and an example of the protocol in jobs/serve.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

from jobs.service.stream import decode_frame, encode_frame


@dataclass
class StreamResult:
    frames: list[tuple[int, bytes]] = field(default_factory=list)  # (timestamp, anonymized JPEG) in arrival order
    dropped: list[int] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    stats: dict | None = None
    client_latency_ms: list[float] = field(default_factory=list)  # send -> receive, client clock
    seconds: float = 0.0


async def stream_frames(ws_url: str, key: str, jpegs: Sequence[bytes], params: dict | None = None,
                        fps: float | None = None, ts_step_us: int = 40_000, timeout_s: float = 300) -> StreamResult:
    """Send `jpegs` (paced at `fps` when given, else as fast as the socket takes them), collect everything."""
    from websockets.asyncio.client import connect

    url = ws_url.rstrip("/") + "/v1/stream" + ("?" + urlencode(params) if params else "")
    res = StreamResult()
    sent_at: dict[int, float] = {}
    t0 = time.perf_counter()
    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}, max_size=64 << 20,
                       open_timeout=30, ping_timeout=None) as ws:

        async def sender() -> None:
            for i, jpeg in enumerate(jpegs):
                ts = i * ts_step_us
                sent_at[ts] = time.perf_counter()
                await ws.send(encode_frame(ts, jpeg))
                if fps:
                    await asyncio.sleep(max(0.0, t0 + (i + 1) / fps - time.perf_counter()))
            await ws.send(json.dumps({"type": "end"}))

        async def receiver() -> None:
            async for msg in ws:
                if isinstance(msg, bytes):
                    ts, jpeg = decode_frame(msg)
                    res.frames.append((ts, jpeg))
                    if ts in sent_at:
                        res.client_latency_ms.append((time.perf_counter() - sent_at[ts]) * 1000)
                    continue
                m = json.loads(msg)
                if m.get("type") == "dropped":
                    res.dropped += m["timestamps"]
                elif m.get("type") == "error":
                    res.errors.append(m)
                elif m.get("type") == "stats" and m.get("final"):
                    res.stats = m

        await asyncio.wait_for(asyncio.gather(sender(), receiver()), timeout_s)
    res.seconds = time.perf_counter() - t0
    return res
