"""Reverse the masks of vault-sealed outputs: `anon restore OUT -o RESTORED`.

Images: the original pixels go back into the decoded output, exactly, and the result is written
losslessly: PNG and TIFF keep their name; lossy formats (JPEG, WebP) become `<name>.png` next to where
they would be (re-encoding a JPEG would change the restored pixels again). Outside the masks the restored
image is the output as published (re-encoded once, metadata removed). Video: frames are decoded,
restored inside the masks and re-encoded losslessly (x264 CRF 0 / lossless VP9), so the masks come back
within the published codec's loss; audio and other kept streams are copied from the output as they are.
The vault is decrypted chunk by chunk into a private spool file and its records are read by frame through
an offset index, so memory does not grow with the length of the video.

Nothing is written unless every asset restores: results are staged in a private folder beside the
destination and moved into place at the end.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from anon_core.config import Limits
from anon_core.media.errors import AssetError
from anon_core.media.probe import sniff
from anon_core.storage import filesystem, is_local, list_inputs
from anon_core.vault.container import open_to
from anon_core.vault.errors import VaultError
from anon_core.vault.keys import Keyring
from anon_core.vault.recorder import SPOOL_BYTES, RecordIndex, RegionRecord, iter_records

LOSSLESS = ("png", "tiff")


@dataclass
class Restored:
    relative_path: str
    restored_path: str
    regions: int
    media_type: str


def _vault_for(fs, root: str, rel: str, single: bool, folder: str) -> str:
    """`<root>/_vault/<rel>.vault`; for one file, the nearest ancestor's `_vault/<path below it>.vault`."""
    if not single:
        return root.rstrip("/") + "/" + posixpath.join(folder, rel) + ".vault"
    parts = root.rstrip("/").split("/")
    for i in range(len(parts) - 1, 0, -1):
        candidate = "/".join(parts[:i]) + "/" + posixpath.join(folder, *parts[i:]) + ".vault"
        if fs.exists(candidate):
            return candidate
    return "/".join(parts[:-1]) + "/" + posixpath.join(folder, parts[-1]) + ".vault"


def restore_tree(output_uri: str, dest: str, kek: bytes, keyring: Keyring, vault: str | None = None,
                 folder: str = "_vault", limits: Limits | None = None) -> list[Restored]:
    """Restore every image/video under `output_uri` into the local folder `dest`; all or nothing."""
    limits = limits or Limits()
    fs, root = filesystem(output_uri)
    single = fs.isfile(root)
    items = [(p, r) for p, r in list_inputs(fs, root, exclude_dirs=("_manifests", folder))]
    if not items:
        raise VaultError(f"no media files under {output_uri}")
    if vault and not single:
        raise VaultError("--vault names one vault object: give one output file with it")
    dest = os.path.abspath(dest)
    parent = os.path.dirname(dest) or "."
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".anon-restore-", dir=parent)
    os.chmod(stage, 0o700)
    done: list[Restored] = []
    try:
        taken: set[str] = set()
        for path, rel in items:
            with fs.open(path, "rb") as fh:
                media = sniff(fh.read(64))
            if media.kind not in ("image", "video"):
                continue  # audio/metadata-only assets have no pixels in a vault
            vpath = vault or _vault_for(fs, root, rel, single, folder)
            vfs, vroot = (fs, vpath) if not vault else filesystem(vault)
            try:
                vfh = vfs.open(vroot, "rb")
            except FileNotFoundError:
                raise VaultError(f"missing vault object for {rel}: {vpath}") from None
            try:
                if media.kind == "image":
                    done.append(_restore_image(fs, path, rel, media, vfh, kek, keyring, stage, limits, taken))
                else:
                    done.append(_restore_video(fs, path, rel, media, vfh, kek, keyring, stage, limits))
            except VaultError as exc:
                raise VaultError(f"{rel}: {exc}") from None
            except AssetError as exc:
                raise VaultError(f"{rel}: cannot decode the output: {exc}") from None
            finally:
                vfh.close()
        for r in done:  # every asset restored: publish
            final = os.path.join(dest, r.restored_path)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(os.path.join(stage, r.restored_path), final)
        return done
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _decrypt(vfh, kek: bytes, keyring: Keyring, output_sha256: str) -> tempfile.SpooledTemporaryFile:
    """The vault's authenticated payload in a private spool file (memory holds one chunk at a time)."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, prefix="anon-restore-")
    try:
        open_to(vfh, spool, kek, keyring, output_sha256)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


def _records(payload) -> list[RegionRecord]:
    try:
        return list(iter_records(payload))
    except (ValueError, Exception) as exc:  # authenticated but unparsable: written by something else
        raise VaultError(f"vault payload is malformed: {exc}") from exc


def _restore_image(fs, path, rel, media, vfh, kek, keyring, stage, limits, taken) -> Restored:
    from PIL import Image

    from anon_core.media import image_io

    data = fs.cat_file(path)
    with _decrypt(vfh, kek, keyring, hashlib.sha256(data).hexdigest()) as payload:
        recs = _records(payload)
    dec = image_io.decode(data, media.format, limits.max_pixels, limits.max_side)
    rgb = np.array(dec.rgb, copy=True)
    for r in reversed(recs):  # reverse order undoes overlapping masks (see recorder.py)
        if r.frame != 0 or r.frame_shape != rgb.shape[:2]:
            raise VaultError("vault records do not fit this image (size differs)")
        r.paste(rgb)
    im = Image.fromarray(rgb, "RGB")
    if dec.alpha is not None:
        im.putalpha(Image.fromarray(dec.alpha, "L"))
    name = rel if media.format in LOSSLESS else posixpath.splitext(rel)[0] + ".png"
    if name in taken:
        name = rel + ".png"
    taken.add(name)
    buf = io.BytesIO()
    if media.format == "tiff":
        im.save(buf, format="TIFF", compression="tiff_deflate")
    else:
        im.save(buf, format="PNG", compress_level=6)
    _write(stage, name, buf.getvalue())
    return Restored(rel, name, len(recs), "image")


def _restore_video(fs, path, rel, media, vfh, kek, keyring, stage, limits) -> Restored:
    h = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            h.update(block)
    payload = _decrypt(vfh, kek, keyring, h.hexdigest())
    try:
        return _restore_video_frames(fs, path, rel, media, RecordIndex(payload), stage, limits)
    except ValueError as exc:  # authenticated but unparsable: written by something else
        raise VaultError(f"vault payload is malformed: {exc}") from exc
    finally:
        payload.close()


def _restore_video_frames(fs, path, rel, media, index: RecordIndex, stage, limits) -> Restored:
    from anon_core.video.decode import VideoReader
    from anon_core.video.encode import VideoWriter
    from anon_core.video.settings import EncoderSettings, VideoSettings

    # near-lossless re-encode: the restored regions must survive the codec (PSNR >= 40 dB inside masks)
    enc = EncoderSettings(crf=0) if media.format != "webm" else EncoderSettings(
        codec="libvpx-vp9", preset="", crf=0, options={"lossless": "1", "deadline": "good", "cpu-used": "4"})
    settings = VideoSettings(encoders={media.format: enc}, pipelining=False, strict_frame_count=False)
    src = path if is_local(fs) else fs.open(path, "rb")
    out = os.path.join(stage, rel)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    reader = VideoReader(src, settings, limits)
    writer = None
    ok = False
    try:
        reader.prime()
        writer = VideoWriter(out, media.format, reader, settings)
        for batch in reader.batches(8):
            if batch.packets:
                writer.write_packets(batch.packets)
            for f in batch.frames:
                rgb = np.array(f.rgb, copy=True)
                for r in reversed(index.records(f.index)):
                    if r.frame_shape != rgb.shape[:2]:
                        raise VaultError("vault records do not fit this video (frame size differs)")
                    r.paste(rgb)
                writer.write_frame(rgb, f.pts, f.duration)
        writer.finish()
        ok = True
    finally:
        if writer is not None and not ok:
            writer.abort()
        reader.close()
        if not isinstance(src, str):
            src.close()
    if missing := index.unused_frames():
        raise VaultError(f"vault has regions for {missing} frames the output does not have")
    return Restored(rel, rel, index.count, "video")


def _write(stage: str, name: str, data: bytes) -> None:
    p = os.path.join(stage, name)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as fh:
        fh.write(data)
