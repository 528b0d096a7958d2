"""Shared pieces of the reliability suite: a real uvicorn server on 127.0.0.1 (in a thread or a child process),
test media, raw-socket helpers. Every loop here is bounded and every wait has a timeout."""

from __future__ import annotations

import io
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jobs.service.child import start_serve

KEY = "reliability-key-0123456789"
OTHER_KEY = "reliability-other-9876543210"
AUTH = {"Authorization": f"Bearer {KEY}"}
OTHER = {"Authorization": f"Bearer {OTHER_KEY}"}
ROOT = Path(__file__).resolve().parents[2]


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class ThreadServer:
    url: str
    ws: str
    port: int
    tmp: Path
    app: object
    server: object
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_thread_server(settings, timeout_s: float = 180) -> ThreadServer:
    """The app on a real uvicorn server in a daemon thread of this process (port held from bind to exit)."""
    import uvicorn

    from jobs.serve import create_app

    app = create_app(settings)
    sock = free_socket()
    port = sock.getsockname()[1]
    try:
        from jobs.service.server import uvicorn_config
        config = uvicorn_config(app, settings, log_level="warning")
    except ImportError:  # the server module came with the fixes; before them plain uvicorn settings
        config = uvicorn.Config(app, log_level="warning", ws_max_size=settings.ws_max_frame_bytes + 8,
                                ws_ping_timeout=None, timeout_keep_alive=5)
    srv = uvicorn.Server(config)
    th = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    deadline = time.monotonic() + timeout_s
    while not srv.started:
        if not th.is_alive() or time.monotonic() > deadline:
            srv.should_exit = True
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    return ThreadServer(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", port, Path(settings.tmp_dir), app,
                        srv, th)


def start_child_server(args: list[str], env: dict, log_path: Path, timeout_s: float = 240
                       ) -> tuple[subprocess.Popen, str]:
    """`anon serve` as a child process on a free port; returns (process, base URL) once /healthz answers."""
    return start_serve(args, env, log_path, timeout_s)


def raw_exchange(port: int, data: bytes, wait_s: float) -> tuple[bytes, bool]:
    """Send `data` on a raw TCP connection and read for up to `wait_s`; (bytes read, closed by the server)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(data)
        s.settimeout(0.25)
        got, closed = b"", False
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            got += chunk
        return got, closed
    finally:
        s.close()


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), from /proc."""
    with open(f"/proc/{pid or 'self'}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def leftovers(tmp: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*")) if tmp.exists() else []


def bomb_jpeg(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny real JPEG whose frame header (SOF0) is patched to declare width x height."""
    data = bytearray(jpeg(np.full((16, 16, 3), 128, np.uint8), quality=50))
    i = 2
    while i < len(data):
        marker = data[i + 1]
        seg = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC2):
            data[i + 5:i + 7] = height.to_bytes(2, "big")
            data[i + 7:i + 9] = width.to_bytes(2, "big")
            return bytes(data)
        i += 2 + seg
    raise AssertionError("no SOF marker")


def bomb_png(side: int = 9400) -> bytes:
    """A PNG of side x side black pixels: ~100 KB on disk, side*side*3 bytes decoded."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    row = b"\0" * (side * 3 + 1)  # filter byte + RGB
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
