"""Capture of the original pixels under every mask, handed to mask application by the pipeline.

`Masker.apply` (and the whole-frame fallback) call `record` just before they overwrite a region, with
the frame's pixels as they are at that moment. Restoring applies the records in reverse order, so a
region masked twice (a face inside a masked person, a residual re-mask) comes back exactly.
Records are compressed as they come; the encrypted vault is written once the output exists.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

_HEAD = struct.Struct("<IIIIIIII")  # frame, frame H, frame W, x, y, w, h, compressed length


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

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._lock = threading.Lock()
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
            self._parts.append(part)
            self.regions += 1
            self.frames.add(frame_index)

    def record_whole(self, frame_index: int, frame: np.ndarray) -> None:
        self.record(frame_index, frame, 0, 0, np.ones(frame.shape[:2], bool))

    def payload(self) -> bytes:
        with self._lock:
            return b"".join(self._parts)


def iter_records(payload: bytes, channels: int = 3) -> Iterator[RegionRecord]:
    """Parse a payload (already authenticated by the vault) back into records, in recording order."""
    off, n = 0, len(payload)
    while off < n:
        if n - off < _HEAD.size:
            raise ValueError("truncated record header")
        frame, fh, fw, x, y, w, h, blen = _HEAD.unpack_from(payload, off)
        off += _HEAD.size
        body = zlib.decompress(payload[off:off + blen])
        off += blen
        nbits = (w * h + 7) // 8
        mask = np.unpackbits(np.frombuffer(body[:nbits], np.uint8), count=w * h).reshape(h, w).astype(bool)
        pixels = np.frombuffer(body[nbits:], np.uint8)
        if pixels.size != int(mask.sum()) * channels:
            raise ValueError("record pixel count does not match its mask")
        yield RegionRecord(frame, (fh, fw), x, y, mask, pixels.reshape(-1, channels))
