"""Still images batched across assets: decode several, run the detectors once over all of them, then let each
asset finish (mask, residual check, encode, audit) on its own.

The archive actor hands a batch of small objects here, so the detectors see many frames per call (equal-size
views share one onnxruntime batch, which is what keeps a GPU busy). Batching changes nothing an asset
records: a result is used only for the exact bytes it was computed from, and any asset whose decoding fails,
or a batch whose detection fails, falls back to the ordinary one-asset path, which reports its own error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from anon_core.audit import sha256_bytes
from anon_core.detections import Detections
from anon_core.media import image_io
from anon_core.media.errors import AnalysisFailed, AssetError
from anon_core.media.probe import MediaType, sniff

log = logging.getLogger(__name__)
MAX_BATCH_PIXELS = 64_000_000  # decoded RGB held at once per detector call (~190 MB)


@dataclass
class PreparedImage:
    """One asset decoded and analysed inside a batch (what `Anonymizer.anonymize_image` would compute)."""

    sha256: str  # of the bytes it came from: a result is only used for the same bytes
    media: MediaType
    decoded: image_io.DecodedImage
    detections: Detections
    failed: bool  # on_analysis_error=mask_frame flagged this frame: it is masked whole
    timings_ms: dict[str, float] = field(default_factory=dict)
    batch_size: int = 1


def prepare_images(anonymizer, datas: Sequence[bytes | None]) -> list[PreparedImage | None]:
    """Decode every image in `datas` and detect over them in as few calls as the pixel budget allows.
    None where an item is not an image, cannot be decoded or its batch failed (processed alone later)."""
    limits = anonymizer.config.limits
    out: list[PreparedImage | None] = [None] * len(datas)
    ready: list[tuple[int, MediaType, image_io.DecodedImage, float]] = []
    for i, data in enumerate(datas):
        if not data or len(data) > limits.max_bytes:
            continue
        media = sniff(data[:64])
        if media.kind != "image":
            continue
        t0 = time.perf_counter()
        try:
            dec = image_io.decode(data, media.format, limits.max_pixels, limits.max_side)
        except (AssetError, MemoryError):
            continue  # the one-asset path decodes it again and records why it failed
        ready.append((i, media, dec, (time.perf_counter() - t0) * 1000))
    for group in _groups(ready):
        frames = [dec.rgb for _, _, dec, _ in group]
        t0 = time.perf_counter()
        try:
            dets, failed = anonymizer.detect_or_mask(frames)
        except AnalysisFailed as exc:  # on_analysis_error=fail: each asset fails (or not) on its own
            log.warning("batched detection failed (%s): the batch's assets are analysed one by one", exc)
            continue
        per_image = (time.perf_counter() - t0) * 1000 / len(group)
        for (i, media, dec, t_dec), d, f in zip(group, dets, failed):
            out[i] = PreparedImage(sha256_bytes(datas[i]), media, dec, d, f, {"decode": t_dec, "detect": per_image},
                                   len(group))
    return out


def _groups(ready: list) -> list[list]:
    groups: list[list] = [[]]
    pixels = 0
    for item in ready:
        n = item[2].rgb.shape[0] * item[2].rgb.shape[1]
        if groups[-1] and pixels + n > MAX_BATCH_PIXELS:
            groups.append([])
            pixels = 0
        groups[-1].append(item)
        pixels += n
    return [g for g in groups if g]
