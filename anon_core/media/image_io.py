"""Still images: bounded decoding with EXIF orientation applied, same-format encoding, metadata policy.

Defaults strip everything that can identify a person or place (EXIF incl. GPS, XMP, IPTC, comments,
embedded thumbnails) and keep the ICC profile so colours render the same. The allow-list can keep
named EXIF tags (e.g. Copyright, Artist), the DPI and, explicitly, XMP or comments.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from anon_core.media.errors import CorruptMedia, TooLarge, UnsupportedMedia

PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "tiff": "TIFF"}
# Orientation is applied to the pixels, so it must never be copied; GPS needs an explicit opt-in.
NEVER_COPY = {"Orientation", "JPEGInterchangeFormat", "JPEGInterchangeFormatLength", "ExifOffset", "GPSInfo"}
TAG_IDS = {name: tag for tag, name in ExifTags.TAGS.items()}


@dataclass
class MetadataPolicy:
    keep_icc: bool = True
    keep_dpi: bool = True
    keep_exif_tags: list[str] = field(default_factory=list)  # EXIF tag names, e.g. ["Copyright", "Artist"]
    keep_gps: bool = False
    keep_xmp: bool = False
    keep_comment: bool = False


@dataclass
class DecodedImage:
    rgb: np.ndarray  # (H, W, 3) uint8, orientation applied
    alpha: np.ndarray | None
    format: str
    mode: str
    info: dict
    exif: Image.Exif
    removed: list[str]  # metadata kinds present in the input


def decode(data: bytes, fmt: str, max_pixels: int, max_side: int) -> DecodedImage:
    if fmt not in PIL_FORMATS:
        raise UnsupportedMedia(f"unsupported image format {fmt!r}")
    if not data:
        raise CorruptMedia("empty file")
    try:
        with warnings.catch_warnings():
            # Pillow's bomb warning becomes an error we report ourselves with our own limits.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=[PIL_FORMATS[fmt]])
            w, h = im.size
            if w * h > max_pixels or max(w, h) > max_side:
                raise TooLarge(f"image is {w}x{h}: above the limit of {max_pixels} pixels / {max_side} px per side")
            pages = getattr(im, "n_frames", 1)
            if pages > 1:
                # Only one frame would be anonymized and written: refuse rather than drop pages silently.
                what = f"multi-page TIFF ({pages} pages)" if fmt == "tiff" else f"animated {fmt} ({pages} frames)"
                raise UnsupportedMedia(f"{what}: only single-page images are anonymized")
            im.load()
    except (TooLarge, UnsupportedMedia):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge(f"decompression bomb refused: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise CorruptMedia(f"not a decodable {fmt} image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptMedia(f"corrupt or truncated {fmt}: {exc}") from exc
    except MemoryError:
        raise
    except Exception as exc:  # Pillow's plugins raise TypeError/IndexError/struct.error on damaged files (fuzzing)
        raise CorruptMedia(f"corrupt {fmt}: {type(exc).__name__}: {exc}") from exc
    removed = _metadata_kinds(im)
    exif = im.getexif()
    try:
        im = ImageOps.exif_transpose(im)
    except Exception as exc:  # a broken orientation tag must not pass the image through unrotated silently
        raise CorruptMedia(f"cannot apply EXIF orientation: {exc}") from exc
    mode = im.mode
    alpha = None
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba)[:, :, 3].copy()
        rgb = np.asarray(rgba.convert("RGB"))
    else:
        rgb = np.asarray(im.convert("RGB"))
    return DecodedImage(np.ascontiguousarray(rgb), alpha, fmt, mode, dict(im.info), exif, removed)


def _metadata_kinds(im: Image.Image) -> list[str]:
    kinds = []
    exif = im.getexif()
    if len(exif):
        kinds.append("exif")
        if exif.get_ifd(0x8825):
            kinds.append("gps")
    info = im.info
    if "xmp" in info or "XML:com.adobe.xmp" in info:
        kinds.append("xmp")
    if "photoshop" in info or "iptc" in info:
        kinds.append("iptc")
    if "comment" in info or any(k.lower() in ("comment", "description") for k in info):
        kinds.append("comment")
    if "exif" in info and b"\xff\xd8" in info["exif"][6:]:
        kinds.append("thumbnail")
    if getattr(im, "text", None):
        kinds.append("text_chunks")
    return kinds


def _filtered_exif(src: Image.Exif, policy: MetadataPolicy) -> Image.Exif | None:
    wanted = {TAG_IDS[n] for n in policy.keep_exif_tags if n in TAG_IDS and n not in NEVER_COPY}
    out = Image.Exif()
    for tag, value in src.items():
        if tag in wanted:
            out[tag] = value
    sub = src.get_ifd(0x8769)
    for tag, value in sub.items():
        if tag in wanted:
            out.get_ifd(0x8769)[tag] = value
    if policy.keep_gps and src.get_ifd(0x8825):
        gps = out.get_ifd(0x8825)
        gps.update(src.get_ifd(0x8825))
    return out if len(out) or out.get_ifd(0x8769) or out.get_ifd(0x8825) else None


def encode(rgb: np.ndarray, decoded: DecodedImage, policy: MetadataPolicy, jpeg_quality: int = 92) -> bytes:
    """Encode in the input's format with only the allow-listed metadata; mode kept where it is safe."""
    im = Image.fromarray(rgb, "RGB")
    if decoded.alpha is not None:
        im.putalpha(Image.fromarray(decoded.alpha, "L"))
        if decoded.format == "jpeg":
            im = im.convert("RGB")
    elif decoded.mode in ("L", "I;16", "I") and decoded.format != "webp":
        im = im.convert("L")
    kwargs: dict = {}
    if policy.keep_icc and decoded.info.get("icc_profile"):
        kwargs["icc_profile"] = decoded.info["icc_profile"]
    if policy.keep_dpi and decoded.info.get("dpi"):
        kwargs["dpi"] = tuple(float(v) for v in decoded.info["dpi"])
    exif = _filtered_exif(decoded.exif, policy)
    if exif is not None:
        kwargs["exif"] = exif.tobytes()
    if policy.keep_xmp and decoded.info.get("xmp") and decoded.format in ("jpeg", "png", "webp"):
        kwargs["xmp"] = decoded.info["xmp"]
    if policy.keep_comment and decoded.info.get("comment") and decoded.format == "jpeg":
        kwargs["comment"] = decoded.info["comment"]
    fmt = PIL_FORMATS[decoded.format]
    if decoded.format == "jpeg":
        kwargs.update(quality=jpeg_quality, optimize=True)
    elif decoded.format == "png":
        kwargs.update(compress_level=6)
    elif decoded.format == "webp":
        kwargs.update(quality=jpeg_quality, method=4)
    elif decoded.format == "tiff":
        kwargs.update(compression="tiff_deflate")
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()
