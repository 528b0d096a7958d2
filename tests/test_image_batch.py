"""Images batched across assets (anon_core/image_batch.py, the archive actor's `job.image_batch`): one detector
call for several assets gives each asset what it would get alone, and bad items fall back to the one-asset path."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from anon_core.audit import AuditRecord
from anon_core.config import AnonConfig
from anon_core.pipeline import Anonymizer


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="module")
def anonymizer():
    return Anonymizer(AnonConfig.from_dict({"policy": "faces"}))


@pytest.fixture(scope="module")
def images(astronaut):
    big = np.asarray(Image.fromarray(astronaut).resize((640, 640)))
    canvas = np.full((480, 720, 3), 90, np.uint8)
    canvas[100:356, 300:556] = np.asarray(Image.fromarray(astronaut).resize((256, 256)))
    return [_jpeg(astronaut), _jpeg(big), _jpeg(canvas), _jpeg(astronaut[:, ::-1].copy())]


def test_batched_detections_equal_one_by_one(anonymizer, images):
    prepared = anonymizer.prepare_images(images)
    assert all(p is not None and p.batch_size == len(images) for p in prepared)
    for data, p in zip(images, prepared):
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        (alone,) = anonymizer.detect([rgb])
        assert len(alone) >= 1 and len(p.detections) == len(alone)
        np.testing.assert_allclose(np.sort(p.detections.xyxy, axis=0), np.sort(alone.xyxy, axis=0), atol=0.5)
        np.testing.assert_allclose(np.sort(p.detections.scores), np.sort(alone.scores), atol=1e-3)


def test_batched_output_matches_the_one_asset_path(anonymizer, images):
    prepared = anonymizer.prepare_images(images)
    for data, p in zip(images, prepared):
        r1, r2 = AuditRecord(run_id="t", input_uri="x", relative_path="x"), AuditRecord(run_id="t", input_uri="x",
                                                                                        relative_path="x")
        alone = anonymizer.process_bytes(data, r1)
        batched = anonymizer.process_bytes(data, r2, prepared=p)
        assert r2.status == "ok" and r2.extra["detect_batch"] == len(images) and "detect_batch" not in r1.extra
        assert r1.detections == r2.detections and r1.masked == r2.masked
        a = np.asarray(Image.open(io.BytesIO(alone)), np.int16)
        b = np.asarray(Image.open(io.BytesIO(batched)), np.int16)
        assert np.abs(a - b).mean() < 0.05  # same masks; at most a boundary pixel moved by float noise


def test_bad_items_fall_back_and_a_result_is_never_used_for_other_bytes(anonymizer, images):
    truncated = images[0][: len(images[0]) // 3]
    prepared = anonymizer.prepare_images([images[0], b"not an image at all", truncated, None, images[2]])
    assert prepared[0] is not None and prepared[4] is not None
    assert prepared[1] is None and prepared[3] is None
    # a truncated JPEG may decode (PIL pads it) or not; either way the one-asset path decides and records it
    rec = AuditRecord(run_id="t", input_uri="x", relative_path="x")
    anonymizer.process_bytes(images[2], rec, prepared=prepared[0])  # another image's result: ignored
    assert "detect_batch" not in rec.extra and rec.status == "ok"
    assert (rec.height, rec.width) == (480, 720)


def test_archive_actor_batches_a_batch_of_images(tmp_path, images):
    """The Ray job's actor class, called as Ray Data calls it: every image row is ok and records its batch."""
    from jobs.archive.actor import AnonymizeActor

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i, data in enumerate(images):
        (src / f"img{i}.jpg").write_bytes(data)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    cfg = AnonConfig.from_dict({"policy": "faces"}).to_dict()
    actor = AnonymizeActor(cfg, {"input": str(src), "output": str(out)}, run_id="batch-test")
    names = sorted(p.name for p in src.iterdir())
    batch = {"rel": np.array(names), "path": np.array([str(src / n) for n in names]),
             "size": np.array([(src / n).stat().st_size for n in names]), "prev": np.array([""] * len(names)),
             "seg": np.array([-1] * len(names))}
    res = actor(batch)
    status = dict(zip(res["relative_path"], res["status"]))
    assert status.pop("broken.jpg") == "failed" and set(status.values()) == {"ok"}
    rows = pq.read_table(next((out / "_manifests").rglob("*.parquet"))).to_pylist()
    extra = {r["relative_path"]: json.loads(r["extra_json"]) for r in rows}
    assert {extra[f"img{i}.jpg"]["detect_batch"] for i in range(len(images))} == {len(images)}
    assert "detect_batch" not in extra["broken.jpg"]
