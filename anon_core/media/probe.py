"""Identify media by content (magic bytes), never by file extension alone."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MediaType:
    kind: str  # image | video | audio | unknown
    format: str  # jpeg, png, webp, tiff, mp4, webm, ...


UNKNOWN = MediaType("unknown", "unknown")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff"}
VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".webm", ".mkv"}
AUDIO_EXTENSIONS = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac"}
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS | AUDIO_EXTENSIONS


def sniff(head: bytes) -> MediaType:
    """Classify from the first bytes of a file (64 are enough)."""
    if head[:3] == b"\xff\xd8\xff":
        return MediaType("image", "jpeg")
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return MediaType("image", "png")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return MediaType("image", "webp")
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return MediaType("image", "tiff")
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"M4A ", b"M4B "):
            return MediaType("audio", "m4a")
        return MediaType("video", "mov" if brand == b"qt  " else "mp4")
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return MediaType("video", "webm" if b"webm" in head[:64] else "mkv")
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return MediaType("audio", "wav")
    if head[:4] == b"fLaC":
        return MediaType("audio", "flac")
    if head[:4] == b"OggS":
        return MediaType("audio", "ogg")
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return MediaType("audio", "mp3")
    return UNKNOWN
