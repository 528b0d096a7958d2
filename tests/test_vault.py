"""Reversible masks (vault.enabled): round trips, wrong key, tampering, missing/swapped vaults, shredding."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.video_helpers import make_clip, read_video

KEY = "3f" * 32
OTHER_KEY = "a1" * 32


def _cli(argv, env, capsys):
    from jobs.cli import main

    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: v for k, v in env.items() if v is not None})
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
    try:
        rc = main(argv)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def sealed(tmp_path_factory, astronaut):
    """One anonymize run with vault.enabled over a PNG, a JPEG and an MP4 clip."""
    base = tmp_path_factory.mktemp("vault")
    src = base / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(astronaut).save(src / "a.png")
    Image.fromarray(astronaut).save(src / "sub" / "b.jpg", quality=90)
    clip = make_clip(str(src / "clip.mp4"), n_frames=24, size=(320, 240), face=80, audio=False)
    ring = base / "ring"
    from jobs.cli import main

    os.environ["ANON_VAULT_KEY"], os.environ["ANON_VAULT_KEYRING"] = KEY, str(ring)
    try:
        rc = main(["anonymize", str(src), "-o", str(base / "out"), "--set", "vault.enabled=true",
                   "--set", "policy=faces", "--no-progress"])
    finally:
        os.environ.pop("ANON_VAULT_KEY")
        os.environ.pop("ANON_VAULT_KEYRING")
    assert rc == 0
    return {"base": base, "src": src, "out": base / "out", "ring": ring, "clip": clip}


def _copy(sealed, tmp_path):
    """A private copy of the output and keyring (tests that tamper or shred must not affect others)."""
    out, ring = tmp_path / "out", tmp_path / "ring"
    shutil.copytree(sealed["out"], out)
    shutil.copytree(sealed["ring"], ring)
    return out, ring


def _rows(out):
    (manifest,) = (out / "_manifests").glob("*.parquet")
    return {r["relative_path"]: r for r in pq.read_table(manifest).to_pylist()}


def test_audit_row_lists_vault_and_key_id_not_key(sealed):
    from anon_core.vault import key_id

    rows = _rows(sealed["out"])
    assert set(rows) == {"a.png", "sub/b.jpg", "clip.mp4"}
    for rel, r in rows.items():
        assert r["status"] == "ok", r["error"]
        v = json.loads(r["extra_json"])["vault"]
        assert v["key_id"] == key_id(bytes.fromhex(KEY)) and v["regions"] >= 1
        vault = sealed["out"] / "_vault" / f"{rel}.vault"
        assert v["uri"] == str(vault) and os.path.isfile(vault)
        import hashlib

        assert v["sha256"] == hashlib.sha256(vault.read_bytes()).hexdigest()
    blob = json.dumps([{k: str(v) for k, v in r.items()} for r in rows.values()])
    assert KEY not in blob and KEY.upper() not in blob
    for f in sealed["ring"].rglob("*"):
        if f.is_file():
            assert KEY not in f.read_text()


def test_round_trip_images_exact_and_video_within_codec_loss(sealed, tmp_path, capsys, astronaut):
    out, ring = _copy(sealed, tmp_path)
    rc, stdout, err = _cli(["restore", str(out), "-o", str(tmp_path / "r")],
                           {"ANON_VAULT_KEY": KEY, "ANON_VAULT_KEYRING": str(ring)}, capsys)
    assert rc == 0, err
    files = {f["from"]: f["to"] for f in json.loads(stdout)["files"]}
    assert files == {"a.png": "a.png", "sub/b.jpg": "sub/b.png", "clip.mp4": "clip.mp4"}
    # PNG: the output differs from the original inside the masks; the restored image is the original
    masked_png = np.asarray(Image.open(out / "a.png"))
    restored_png = np.asarray(Image.open(tmp_path / "r" / "a.png"))
    assert (masked_png != astronaut).any(-1).sum() > 2000
    assert np.array_equal(restored_png, astronaut)
    # JPEG: identical decoded pixels inside the masks (where the published output changed them)
    orig = np.asarray(Image.open(sealed["src"] / "sub" / "b.jpg").convert("RGB")).astype(int)
    pub = np.asarray(Image.open(out / "sub" / "b.jpg").convert("RGB")).astype(int)
    rest = np.asarray(Image.open(tmp_path / "r" / "sub" / "b.png")).astype(int)
    inside = np.abs(orig - pub).max(-1) > 30
    assert inside.sum() > 2000 and np.array_equal(rest[inside], orig[inside])
    # video: PSNR inside the masks (the known face boxes) >= 40 dB, while the published output is far off
    src_frames, _, _ = read_video(str(sealed["src"] / "clip.mp4"))
    pub_frames, _, _ = read_video(str(out / "clip.mp4"))
    rest_frames, _, _ = read_video(str(tmp_path / "r" / "clip.mp4"))
    assert len(src_frames) == len(rest_frames) == 24

    # the exact masks, from the vault itself
    import hashlib

    from anon_core.vault import Keyring
    from anon_core.vault.container import open_vault
    from anon_core.vault.recorder import iter_records

    digest = hashlib.sha256((out / "clip.mp4").read_bytes()).hexdigest()
    _, payload = open_vault((out / "_vault" / "clip.mp4.vault").read_bytes(), bytes.fromhex(KEY), Keyring(str(ring)),
                            digest)
    masks = [np.zeros(f.shape[:2], bool) for f in src_frames]
    for r in iter_records(payload):
        h, w = r.mask.shape
        masks[r.frame][r.y:r.y + h, r.x:r.x + w] |= r.mask

    def psnr(a, b, m):
        d = a[m].astype(float) - b[m].astype(float)
        return 10 * np.log10(255**2 / max(np.mean(d**2), 1e-9))

    assert all(m.sum() > 1500 for m in masks)
    restored = [psnr(s, r, m) for s, r, m in zip(src_frames, rest_frames, masks)]
    published = [psnr(s, p, m) for s, p, m in zip(src_frames, pub_frames, masks)]
    assert min(restored) >= 40, restored
    assert max(published) < 30, published


def _restore_fails(tmp_path, out, ring, capsys, key=KEY, extra=()):
    dest = tmp_path / "restored"
    rc, _, err = _cli(["restore", str(out), "-o", str(dest), *extra],
                      {"ANON_VAULT_KEY": key, "ANON_VAULT_KEYRING": str(ring)}, capsys)
    assert rc != 0
    assert len(err.strip().splitlines()) == 1, err
    assert not dest.exists() or not any(dest.rglob("*")), "nothing may be written on failure"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".anon-restore-")]
    return err


def test_wrong_key_refused(sealed, tmp_path, capsys):
    out, ring = _copy(sealed, tmp_path)
    assert "wrong key" in _restore_fails(tmp_path, out, ring, capsys, key=OTHER_KEY)
    assert "ANON_VAULT_KEY" in _restore_fails(tmp_path, out, ring, capsys, key=None)
    assert "64 hex" in _restore_fails(tmp_path, out, ring, capsys, key="12345")


def test_tampered_vault_refused(sealed, tmp_path, capsys):
    out, ring = _copy(sealed, tmp_path)
    v = out / "_vault" / "a.png.vault"
    blob = bytearray(v.read_bytes())
    blob[-20] ^= 0x01  # ciphertext
    v.write_bytes(bytes(blob))
    assert "tampered" in _restore_fails(tmp_path, out, ring, capsys)
    # header edit (regions count): authenticated as associated data
    blob = bytearray((sealed["out"] / "_vault" / "a.png.vault").read_bytes())
    i = blob.index(b'"regions":') + len(b'"regions":')
    blob[i] = ord("7") if blob[i] != ord("7") else ord("8")
    v.write_bytes(bytes(blob))
    assert "tampered" in _restore_fails(tmp_path, out, ring, capsys)
    v.write_bytes(bytes(blob[:200]))  # truncated
    assert "tampered" in _restore_fails(tmp_path, out, ring, capsys)


def test_swapped_vault_and_edited_output_refused(sealed, tmp_path, capsys):
    out, ring = _copy(sealed, tmp_path)
    shutil.copy(out / "_vault" / "sub" / "b.jpg.vault", out / "_vault" / "a.png.vault")
    assert "does not belong" in _restore_fails(tmp_path, out, ring, capsys)
    out, ring = _copy(sealed, tmp_path / "2")
    with open(out / "a.png", "ab") as fh:
        fh.write(b"\0")
    assert "does not belong" in _restore_fails(tmp_path / "2", out, ring, capsys)


def test_missing_vault_object_refused(sealed, tmp_path, capsys):
    out, ring = _copy(sealed, tmp_path)
    (out / "_vault" / "clip.mp4.vault").unlink()
    err = _restore_fails(tmp_path, out, ring, capsys)
    assert "missing vault" in err and "clip.mp4" in err


def test_shred_then_restore_refused_and_logged(sealed, tmp_path, capsys):
    from anon_core.vault import key_id

    out, ring = _copy(sealed, tmp_path)
    kid = key_id(bytes.fromhex(KEY))
    env = {"ANON_VAULT_KEYRING": str(ring)}
    # one asset's data key first, then the whole key id
    a_dek = json.loads(_rows(out)["a.png"]["extra_json"])["vault"]["data_key_id"]
    rc, stdout, err = _cli(["shred", kid, "--data-key", a_dek], env, capsys)
    assert rc == 0 and json.loads(stdout)["data_keys_destroyed"] == 1
    assert "shredded" in _restore_fails(tmp_path, out, ring, capsys)
    rc, stdout, err = _cli(["shred", kid], env, capsys)
    assert rc == 0 and json.loads(stdout)["data_keys_destroyed"] == 2
    assert not (ring / kid).exists()
    err = _restore_fails(tmp_path, out, ring, capsys, extra=("--vault", str(out / "_vault" / "sub" / "b.jpg.vault")))
    err = _restore_fails(tmp_path, out / "sub" / "b.jpg", ring, capsys)
    assert "shredded" in err
    log = [json.loads(line) for line in (ring / "shred_log.jsonl").read_text().splitlines()]
    assert [e["key_id"] for e in log] == [kid, kid] and log[1]["data_keys_destroyed"] == 2
    rc, _, err = _cli(["shred", kid], env, capsys)
    assert rc != 0 and "no key material" in err
    rc, _, err = _cli(["shred", "not-a-key-id"], env, capsys)
    assert rc != 0 and "not a vault key id" in err


def test_anonymize_without_key_writes_nothing(tmp_path, capsys, astronaut):
    Image.fromarray(astronaut).save(tmp_path / "a.png")
    rc, _, err = _cli(["anonymize", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--set", "vault.enabled=true"],
                      {"ANON_VAULT_KEY": None, "ANON_VAULT_KEYRING": str(tmp_path / "ring")}, capsys)
    assert rc == 2 and "ANON_VAULT_KEY" in err
    assert not (tmp_path / "o").exists()


def test_recorder_reverses_overlapping_masks():
    """A face inside a masked person (masked twice): restoring in reverse order gives the original back."""
    from anon_core.detections import Detections
    from anon_core.masking import Masker
    from anon_core.masking.apply import MaskSpec
    from anon_core.vault.recorder import MaskRecorder, iter_records

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    dets = Detections(xyxy=np.array([[20, 10, 140, 110], [60, 30, 100, 70]], np.float32),
                      scores=np.array([0.9, 0.9], np.float32), labels=np.array(["person", "face"]))
    masker = Masker({"person": MaskSpec("pixelate", "box", 1.0, {}), "face": MaskSpec("blur", "ellipse", 1.3, {})})
    rec = MaskRecorder()
    out, n = masker.apply(img, dets, rec, 5)
    assert n == 2 and rec.regions == 2 and rec.frames == {5}
    restored = out.copy()
    for r in reversed(list(iter_records(rec.payload()))):
        r.paste(restored)
    assert np.array_equal(restored, img)


def test_long_recordings_spool_to_disk_and_seal_in_bounded_memory(tmp_path, monkeypatch):
    """A long video's recorded pixels leave memory: recording, sealing and restoring-by-frame stay far below the
    payload's size (tracemalloc peak), and the round trip over many chunks gives every record back."""
    import io
    import tracemalloc

    from anon_core.vault import container
    from anon_core.vault.container import open_to, seal_to
    from anon_core.vault.errors import VaultError
    from anon_core.vault.keys import Keyring
    from anon_core.vault.recorder import MaskRecorder, RecordIndex

    monkeypatch.setattr(container, "CHUNK", 1 << 20)
    kek = bytes.fromhex(KEY)
    ring = Keyring(str(tmp_path / "ring"))
    kid, dek_id, dek = ring.new_data_key(kek, "asset")
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)  # incompressible: 690 KB per whole frame
    rec = MaskRecorder(spool_bytes=1 << 20)
    tracemalloc.start()
    try:
        for i in range(48):  # ~33 MB of records, frames recorded out of order at the end
            rec.record_whole(i if i < 40 else 87 - i, frame)
            rec.record(i if i < 40 else 87 - i, frame, 10, 20, np.ones((30, 40), bool))
        sealed = tmp_path / "v.vault"
        with open(sealed, "wb") as fh:
            seal_to(fh, rec.stream(), rec.size, dek, {"key_id": kid, "data_key_id": dek_id, "output_sha256": "x"})
        out = tmp_path / "payload"
        with open(sealed, "rb") as fh, open(out, "w+b") as pf:
            open_to(fh, pf, kek, ring, "x")
            index = RecordIndex(pf)
            got = index.records(47)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rec.spilled and rec.size > 30 << 20
    assert sealed.stat().st_size > rec.size and index.count == 96
    assert peak < 12 << 20, f"peak {peak / 2**20:.1f} MiB for a {rec.size / 2**20:.0f} MiB payload"
    # frame 47 was recorded 9th from the end (i = 40): whole frame first, then the small region
    assert [r.mask.shape for r in got] == [(360, 640), (30, 40)]
    assert np.array_equal(got[0].pixels.reshape(360, 640, 3), frame)
    rec.close()
    with pytest.raises(VaultError, match="tampered"):  # a chunk cut out of the middle is refused
        blob = sealed.read_bytes()
        open_to(io.BytesIO(blob[:len(blob) // 2] + blob[len(blob) // 2 + 100:]), io.BytesIO(), kek, ring, "x")
