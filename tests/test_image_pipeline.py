import io
import json
import struct
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageCms

from anon_core.audit import SCHEMA, AuditRecord
from anon_core.config import AnonConfig
from anon_core.runner import run

from .conftest import ASTRONAUT_FACE
from .jpeg_segments import jpeg_metadata_kinds, png_chunks


def _exif(orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "SecretCam"
    exif[0x8298] = "(c) Someone"  # Copyright
    exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 18.0)})
    return exif.tobytes()


def _jpeg_with_everything(img: np.ndarray, orientation: int = 1) -> bytes:
    buf = io.BytesIO()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    Image.fromarray(img).save(buf, "JPEG", quality=95, exif=_exif(orientation), icc_profile=icc,
                              comment=b"shot at 1 Main St", xmp=xmp)
    return buf.getvalue()


def _process(anonymizer, data: bytes) -> tuple[bytes | None, AuditRecord]:
    rec = AuditRecord(input_uri="mem://x")
    return anonymizer.process_bytes(data, rec), rec


def test_metadata_stripped_icc_kept(anonymizer, astronaut):
    src = _jpeg_with_everything(astronaut)
    assert {"exif", "xmp", "comment", "icc", "gps_pointer"} <= jpeg_metadata_kinds(src)
    out, rec = _process(anonymizer, src)
    assert rec.status == "ok", rec.error
    kinds = jpeg_metadata_kinds(out)
    assert kinds == {"icc"}, kinds  # independent parser: EXIF (GPS), XMP and the comment are gone
    assert {"exif", "gps", "xmp", "comment"} <= set(rec.metadata_removed)


def test_metadata_allow_list_keeps_named_tags_only(astronaut):
    from anon_core.config import AnonConfig
    from anon_core.media.image_io import MetadataPolicy
    from anon_core.pipeline import Anonymizer

    cfg = AnonConfig(policy="faces", metadata=MetadataPolicy(keep_exif_tags=["Copyright", "Orientation"]))
    out, rec = _process(Anonymizer(cfg), _jpeg_with_everything(astronaut, orientation=6))
    exif = Image.open(io.BytesIO(out)).getexif()
    assert exif.get(0x8298) == "(c) Someone"
    assert 0x010F not in exif and 0x0112 not in exif  # Make dropped; Orientation never copied (pixels rotated)
    assert not exif.get_ifd(0x8825)


def test_png_text_chunks_removed(anonymizer, astronaut):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "GPS 52.5 13.4")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta/>")
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, "PNG", pnginfo=info, exif=_exif())
    out, rec = _process(anonymizer, buf.getvalue())
    assert rec.status == "ok"
    kinds = {k for k, _ in png_chunks(out)}
    assert not kinds & {b"tEXt", b"iTXt", b"zTXt", b"eXIf"}, kinds


def test_orientation_applied(anonymizer, astronaut):
    stored = np.ascontiguousarray(np.rot90(astronaut, 1))  # stored rotated 90 CCW, flag says rotate back
    out, rec = _process(anonymizer, _jpeg_with_everything(stored, orientation=6))
    im = Image.open(io.BytesIO(out))
    assert rec.status == "ok" and rec.detections.get("face") == 1
    assert im.getexif().get(0x0112) is None
    got = np.asarray(im.convert("RGB")).astype(int)
    # Outside the face the displayed picture equals the upright original (up to JPEG noise).
    assert np.abs(got[300:, :] - astronaut[300:, :]).mean() < 6


def test_end_to_end_face_changed_background_not(tmp_path, astronaut):
    (tmp_path / "in/sub").mkdir(parents=True)
    Image.fromarray(astronaut).save(tmp_path / "in/sub/astronaut.png")
    # Faces only: under the default policy the name patches on the suit are (rightly) masked as text/plates.
    summary = run(str(tmp_path / "in"), str(tmp_path / "out"), AnonConfig(policy="faces"), progress=False)
    assert summary.ok == 1 and summary.failed == 0
    out = np.asarray(Image.open(tmp_path / "out/sub/astronaut.png").convert("RGB")).astype(int)
    x1, y1, x2, y2 = ASTRONAUT_FACE
    inner = (slice(y1 + 30, y2 - 30), slice(x1 + 20, x2 - 20))
    assert np.abs(out[inner] - astronaut[inner]).mean() > 10
    changed = (out != astronaut).any(axis=2)
    changed[max(0, y1 - 60) : y2 + 60, max(0, x1 - 60) : x2 + 60] = False
    assert changed.sum() == 0  # PNG is lossless: not one pixel outside the face region changed
    table = pq.read_table(summary.manifest)
    assert table.schema.equals(SCHEMA)
    row = table.to_pylist()[0]
    assert row["status"] == "ok" and row["relative_path"] == "sub/astronaut.png"
    assert row["models"][0]["weights_sha256"] and len(row["input_sha256"]) == 64
    assert dict(row["detections"])["face"] == 1 and row["config_hash"]
    import hashlib

    assert row["output_sha256"] == hashlib.sha256((tmp_path / "out/sub/astronaut.png").read_bytes()).hexdigest()


def _png_header(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\x00" * 1000)
    chunk += struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    return b"\x89PNG\r\n\x1a\n" + chunk


def _bad_inputs(astronaut) -> dict[str, bytes]:
    good = io.BytesIO()
    Image.fromarray(astronaut).save(good, "JPEG")
    g = good.getvalue()
    flipped = bytearray(g)
    for i in range(600, len(flipped), 97):
        flipped[i] ^= 0xFF
    return {
        "empty.jpg": b"",
        "truncated.jpg": g[: len(g) // 2],
        "random.png": bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)),
        "bomb.png": _png_header(60000, 60000),
        "header_only.jpg": g[:200],
        "bitflip.jpg": bytes(flipped),
    }


def test_bad_inputs_fail_cleanly(tmp_path, astronaut, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for name, data in _bad_inputs(astronaut).items():
        (src / name).write_bytes(data)
    Image.fromarray(astronaut).save(src / "good.png")
    summary = run(str(src), str(tmp_path / "out"), progress=False)
    rows = {r.relative_path: r for r in summary.records}
    assert rows["good.png"].status == "ok"
    for name in _bad_inputs(astronaut):
        r = rows[name]
        if name == "bitflip.jpg" and r.status == "ok":
            continue  # a bit-flipped JPEG may still decode to a (damaged) image; it is then anonymized
        assert r.status == "failed" and r.error and "\n" not in r.error, (name, r.error)
        assert not (tmp_path / "out" / name).exists()
    assert rows["bomb.png"].error_code == "too_large"
    leftovers = [p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".partial")]
    assert not leftovers


def test_wrong_extension_is_read_by_content(tmp_path, astronaut):
    (tmp_path / "in").mkdir()
    Image.fromarray(astronaut).save(tmp_path / "in/photo.jpg", format="PNG")
    summary = run(str(tmp_path / "in"), str(tmp_path / "out"), progress=False)
    rec = summary.records[0]
    assert rec.status == "ok" and rec.format == "png" and rec.detections.get("face") == 1


def test_cli_exit_status_and_manifest(tmp_path, astronaut):
    from jobs.cli import main

    (tmp_path / "in").mkdir()
    Image.fromarray(astronaut).save(tmp_path / "in/a.png")
    assert main(["anonymize", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--no-progress",
                 "--set", "mask=pixelate", "--set", "policy=faces"]) == 0
    (tmp_path / "in/b.jpg").write_bytes(b"\xff\xd8\xff broken")
    assert main(["anonymize", str(tmp_path / "in"), "-o", str(tmp_path / "out2"), "--no-progress"]) == 1
    assert (tmp_path / "out2/a.png").exists() and not (tmp_path / "out2/b.jpg").exists()
    manifests = list((tmp_path / "out2/_manifests").glob("*.parquet"))
    assert len(manifests) == 1 and pq.read_table(manifests[0]).num_rows == 2


def test_cli_rejects_unknown_keys(tmp_path, capsys):
    from jobs.cli import main

    assert main(["anonymize", str(tmp_path), "-o", str(tmp_path / "o"), "--set", "metadata.keep_gpss=true"]) == 2
    assert "bad configuration" in capsys.readouterr().err


def test_hydra_defaults_equal_core_defaults():
    """conf/config.yaml documents the defaults; it must not drift from the core's dataclasses."""
    from anon_core.config import AnonConfig
    from jobs.config import load_config

    assert json.dumps(load_config([]).to_dict(), sort_keys=True) == json.dumps(AnonConfig().to_dict(), sort_keys=True)


def test_video_fast_group_sets_detector_and_frame_step():
    from jobs.config import load_config

    fast, default = load_config(["detector=video_fast"]), load_config([])
    assert fast.video.detect_every_k == 3 and default.video.detect_every_k == 1
    assert fast.detectors["face"].params["scales"] == [1.0]
    assert fast.detectors["plate"] == default.detectors["plate"]  # the other classes are untouched


@pytest.mark.parametrize("fmt", ["WEBP", "TIFF"])
def test_other_still_formats(anonymizer, astronaut, fmt):
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, fmt)
    out, rec = _process(anonymizer, buf.getvalue())
    assert rec.status == "ok" and Image.open(io.BytesIO(out)).format == fmt and rec.detections.get("face") == 1
