"""Request bodies to a private temp file, chunk by chunk (raw or multipart), with a hard size limit."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request


class BodyTooLarge(Exception):
    pass


class BadUpload(Exception):
    pass


class BodyStalled(Exception):
    """The body stopped arriving (idle gap) or arrives slower than the minimum rate."""


class Pace:
    """Upload pacing: a chunk gap above `idle_s`, or an average rate under `min_rate` bytes/s once `grace_s`
    have passed, ends the upload. A body that trickles in therefore holds its request slot for seconds, not for
    the whole request time limit."""

    def __init__(self, idle_s: float = 30.0, min_rate: float = 0.0, grace_s: float = 10.0) -> None:
        self.idle_s, self.min_rate, self.grace_s = idle_s, min_rate, grace_s
        self.t0 = time.monotonic()
        self.received = 0

    def timeout(self) -> float:
        """How long to wait for the next chunk: the idle limit, or less where the rate limit bites sooner."""
        wait = self.idle_s
        if self.min_rate > 0:
            due = self.t0 + max(self.grace_s, self.received / self.min_rate)  # when the average drops too low
            wait = min(wait, max(0.05, due - time.monotonic()))
        return wait

    def add(self, n: int) -> None:
        self.received += n
        elapsed = time.monotonic() - self.t0
        if self.min_rate > 0 and elapsed > self.grace_s and self.received < self.min_rate * elapsed:
            raise BodyStalled(f"upload slower than {self.min_rate:g} bytes/s")


async def paced_chunks(request: Request, pace: Pace):
    """request.stream() with the pacing limits applied between chunks."""
    it = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(it.__anext__(), pace.timeout())
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise BodyStalled("upload stalled: no data within the upload time limits") from exc
        pace.add(len(chunk))
        yield chunk


def private_workdir(root: str | None) -> str:
    """A fresh directory only this user can enter (mkdtemp already uses 0700; chmod makes it explicit).
    The name carries this process's id, so a restarted server can tell its dead predecessor's dirs apart."""
    if root:
        os.makedirs(root, mode=0o700, exist_ok=True)
    path = tempfile.mkdtemp(prefix=f"anon-svc-{os.getpid()}-", dir=root)
    os.chmod(path, 0o700)
    return path


def remove_stale_workdirs(root: str | None) -> int:
    """Remove request dirs that a killed server process left behind (run at start-up). Dirs of processes that
    are still alive are kept, so instances sharing a temp root do not delete each other's requests."""
    root = root or tempfile.gettempdir()
    n = 0
    if not os.path.isdir(root):
        return 0
    for entry in os.scandir(root):
        parts = entry.name.split("-")
        if entry.name.startswith("anon-svc-") and len(parts) >= 4 and parts[2].isdigit() \
                and entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.getuid() \
                and not _alive(int(parts[2])):
            shutil.rmtree(entry.path, ignore_errors=True)
            n += 1
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_workdir(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


async def receive_body(request: Request, dest: str, limit: int, pace: Pace | None = None) -> int:
    """Write the upload to `dest` (mode 0600); returns its size. Multipart: the first file part (or the part
    named `file`). Raises BodyTooLarge, BadUpload, BodyStalled, or starlette's ClientDisconnect."""
    pace = pace or Pace()
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body is {declared} bytes: above the limit of {limit}")
    ctype, params = parse_options_header(request.headers.get("content-type"))
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        if ctype == b"multipart/form-data":
            boundary = params.get(b"boundary")
            if not boundary:
                raise BadUpload("multipart body without a boundary")
            written = await _receive_multipart(request, fh, boundary, limit, pace)
        else:
            written = 0
            async for chunk in paced_chunks(request, pace):
                written += len(chunk)
                if written > limit:
                    raise BodyTooLarge(f"body is above the limit of {limit} bytes")
                fh.write(chunk)
    return written


async def _receive_multipart(request: Request, fh, boundary: bytes, limit: int, pace: Pace) -> int:
    state = {"field": b"", "value": b"", "headers": {}, "taking": False, "done": False, "written": 0}

    def on_part_begin() -> None:
        state["headers"] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        is_file = b"filename" in disp or disp.get(b"name") == b"file"
        state["taking"] = is_file and not state["done"]

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["taking"]:
            fh.write(data[start:end])
            state["written"] += end - start

    def on_part_end() -> None:
        if state["taking"]:
            state["taking"], state["done"] = False, True

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    })
    received = 0
    try:
        async for chunk in paced_chunks(request, pace):
            received += len(chunk)
            if received > limit:
                raise BodyTooLarge(f"body is above the limit of {limit} bytes")
            parser.write(chunk)
        parser.finalize()
    except (BodyTooLarge, BodyStalled, ClientDisconnect):
        raise
    except Exception as exc:  # python-multipart raises its own parse errors
        raise BadUpload(f"malformed multipart body: {exc}") from exc
    if not state["done"]:
        raise BadUpload("multipart body has no file part (send the media as a part named 'file')")
    return state["written"]
