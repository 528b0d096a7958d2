"""A minimal, independent JPEG/PNG metadata reader for tests (does not use Pillow)."""

from __future__ import annotations

import struct
import zlib


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) for every segment before the scan."""
    assert data[:2] == b"\xff\xd8"
    i, out = 2, []
    while i < len(data):
        assert data[i] == 0xFF, f"bad marker at {i}"
        marker = data[i + 1]
        if marker == 0xDA:  # start of scan: metadata is all before it
            break
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        out.append((marker, data[i + 4 : i + 2 + length]))
        i += 2 + length
    return out


def jpeg_metadata_kinds(data: bytes) -> set[str]:
    kinds = set()
    for marker, payload in jpeg_segments(data):
        if marker == 0xE1 and payload.startswith(b"Exif\x00\x00"):
            kinds.add("exif")
            if b"\x88\x25" in payload[:4096] or b"\x25\x88" in payload[:4096]:
                kinds.add("gps_pointer")
        elif marker == 0xE1 and payload.startswith(b"http://ns.adobe.com/xap/1.0/"):
            kinds.add("xmp")
        elif marker == 0xED:
            kinds.add("iptc")
        elif marker == 0xFE:
            kinds.add("comment")
        elif marker == 0xE2 and payload.startswith(b"ICC_PROFILE"):
            kinds.add("icc")
    return kinds


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    i, out = 8, []
    while i < len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        kind = data[i + 4 : i + 8]
        payload = data[i + 8 : i + 8 + length]
        assert zlib.crc32(kind + payload) == struct.unpack(">I", data[i + 8 + length : i + 12 + length])[0]
        out.append((kind, payload))
        i += 12 + length
    return out
