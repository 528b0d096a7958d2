"""Capture of the original pixels under every mask, handed to mask application by the pipeline.

`Masker.apply` (and the whole-frame fallback) call `record` just before they overwrite a region, with
the frame's pixels as they are at that moment. Restoring applies the records in reverse order, so a
region masked twice (a face inside a masked person, a residual re-mask) comes back exactly.
Records are compressed as they come and spooled to a private temporary file once they pass a few MiB, so
memory does not grow with the length of a video; the encrypted vault is sealed from that file once the
output exists.
"""

from __future__ import annotations

import io
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

_HEAD = struct.Struct("<IIIIIIII")  # frame, frame H, frame W, x, y, w, h, compressed length
SPOOL_BYTES = 8 << 20  # records above this go to a temporary file


@dataclass
class RegionRecord:
    frame: int
    frame_shape: tuple[int, int]
    x: int
    y: int
    mask: np.ndarray  # (h, w) bool
    pixels: np.ndarray  # (n, C) uint8: the frame's pixels where mask is set, row-major

    def paste(self, frame: np.ndarray) -> None:
        h, w = self.mask.shape
        roi = frame[self.y:self.y + h, self.x:self.x + w]
        roi[self.mask] = self.pixels


class MaskRecorder:
    """Collects RegionRecords of one asset (thread-safe: video masks in its analyser thread)."""

    def __init__(self, spool_bytes: int = SPOOL_BYTES) -> None:
        self._spool = tempfile.SpooledTemporaryFile(max_size=spool_bytes, prefix="anon-vault-")
        self._lock = threading.Lock()
        self.size = 0
        self.regions = 0
        self.frames: set[int] = set()

    def record(self, frame_index: int, frame: np.ndarray, x: int, y: int, mask: np.ndarray) -> None:
        """Keep `frame[y:y+h, x:x+w][mask]` (before it is overwritten)."""
        h, w = mask.shape
        fh, fw = frame.shape[:2]
        if x < 0 or y < 0 or x + w > fw or y + h > fh:
            raise ValueError("recorded region outside the frame")
        pixels = np.ascontiguousarray(frame[y:y + h, x:x + w][mask])
        body = zlib.compress(np.packbits(mask, axis=None).tobytes() + pixels.tobytes(), 1)
        part = _HEAD.pack(frame_index, fh, fw, x, y, w, h, len(body)) + body
        with self._lock:
            self._spool.write(part)
            self.size += len(part)
            self.regions += 1
            self.frames.add(frame_index)

    def record_whole(self, frame_index: int, frame: np.ndarray) -> None:
        self.record(frame_index, frame, 0, 0, np.ones(frame.shape[:2], bool))

    @property
    def spilled(self) -> bool:
        """True once the records moved from memory to the temporary file."""
        return bool(getattr(self._spool, "_rolled", False))

    def stream(self) -> BinaryIO:
        """The recorded payload, rewound for reading (recording must be over)."""
        with self._lock:
            self._spool.flush()
            self._spool.seek(0)
            return self._spool

    def payload(self) -> bytes:
        return self.stream().read()

    def close(self) -> None:
        self._spool.close()


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    b = fh.read(n)
    if len(b) != n:
        raise ValueError("truncated record")
    return b


def _decode(fh: BinaryIO, head: tuple, channels: int) -> RegionRecord:
    frame, fh_, fw, x, y, w, h, blen = head
    body = zlib.decompress(_read_exact(fh, blen))
    nbits = (w * h + 7) // 8
    mask = np.unpackbits(np.frombuffer(body[:nbits], np.uint8), count=w * h).reshape(h, w).astype(bool)
    pixels = np.frombuffer(body[nbits:], np.uint8)
    if pixels.size != int(mask.sum()) * channels:
        raise ValueError("record pixel count does not match its mask")
    return RegionRecord(frame, (fh_, fw), x, y, mask, pixels.reshape(-1, channels))


def _heads(fh: BinaryIO) -> Iterator[tuple[int, tuple]]:
    """(offset of the body, record header) for each record, reading forward from the start."""
    fh.seek(0)
    while True:
        raw = fh.read(_HEAD.size)
        if not raw:
            return
        if len(raw) != _HEAD.size:
            raise ValueError("truncated record header")
        head = _HEAD.unpack(raw)
        off = fh.tell()
        yield off, head
        fh.seek(off + head[7])


def iter_records(payload: bytes | BinaryIO, channels: int = 3) -> Iterator[RegionRecord]:
    """Parse a payload (already authenticated by the vault) back into records, in recording order."""
    fh = io.BytesIO(payload) if isinstance(payload, bytes | bytearray) else payload
    for off, head in _heads(fh):
        fh.seek(off)
        yield _decode(fh, head, channels)


class RecordIndex:
    """Random access to a spooled payload by frame, holding only offsets in memory (16 bytes per record).

    Records of one frame keep their recording order, which restoring reverses."""

    def __init__(self, fh: BinaryIO, channels: int = 3) -> None:
        self._fh, self._channels = fh, channels
        frames, offsets = [], []
        for off, head in _heads(fh):
            frames.append(head[0])
            offsets.append(off - _HEAD.size)
        f = np.asarray(frames, np.int64)
        order = np.argsort(f, kind="stable")
        self._frames, self._offsets = f[order], np.asarray(offsets, np.int64)[order]
        self._used = np.zeros(len(f), bool)
        self.count = len(f)

    def records(self, frame: int) -> list[RegionRecord]:
        lo, hi = np.searchsorted(self._frames, [frame, frame + 1])
        out = []
        for i in range(int(lo), int(hi)):
            self._fh.seek(int(self._offsets[i]))
            head = _HEAD.unpack(_read_exact(self._fh, _HEAD.size))
            out.append(_decode(self._fh, head, self._channels))
        self._used[lo:hi] = True
        return out

    def unused_frames(self) -> int:
        """Frames with records that no `records()` call asked for."""
        return len(np.unique(self._frames[~self._used]))
