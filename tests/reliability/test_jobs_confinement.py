"""Job probe classes: URIs (`..`, absolute, encoded, chained), symlinks at listing and at open (also a folder
swapped for a symlink while the job waits), read-only originals, long names, per-key queue quota."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from tests.reliability.conftest import make_settings
from tests.reliability.helpers import AUTH, OTHER, jpeg, start_thread_server


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("jobs")
    read, write, outside = base / "originals", base / "anonymized", base / "outside"
    for d in (read, write, outside, base / "tmp"):
        d.mkdir()
    s = make_settings(base / "tmp", job_workers=1, max_jobs_queued=6, max_jobs_per_key=2,
                      read_prefixes=[f"file://{read}/"], write_prefixes=[f"file://{write}/"])
    if not hasattr(s, "read_prefixes") or "read_prefixes" not in type(s).__dataclass_fields__:
        s.allowed_prefixes = [f"file://{read}/", f"file://{write}/"]  # builds before the split had one list
    server = start_thread_server(s)
    client = httpx.Client(base_url=server.url, timeout=60)
    yield type("Env", (), {"read": read, "write": write, "outside": outside, "client": client, "srv": server})
    client.close()
    server.stop()


def _wait(client, job_id: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        st = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
        if st["status"] in ("done", "failed") or time.monotonic() > deadline:
            return st
        time.sleep(0.1)


def _submit(env, inp: str, out: str, headers=AUTH) -> httpx.Response:
    return env.client.post("/v1/jobs", headers=headers, json={"input": inp, "output": out})


@pytest.mark.parametrize("uri", [
    "file:///etc/passwd", "/etc/passwd", "READ/../outside", "READ/./a", "READ/%2e%2e/outside", "READ/a%2Fb",
    "simplecache::file://READ/", "http://127.0.0.1:1/x", "file://evil.example/READ", "READ\\..\\x", "READ?x=1",
    "relative/READ", "s3://READ", "",
])
def test_uri_escapes_are_refused(env, uri):
    uri = uri.replace("READ", str(env.read))
    r = _submit(env, uri, f"file://{env.write}/o")
    assert r.status_code in (403, 422), (uri, r.text)
    r = _submit(env, f"file://{env.read}", uri.replace(str(env.read), str(env.write)))
    assert r.status_code in (403, 422), (uri, r.text)


def test_symlinks_inside_a_prefix_are_not_followed(env, astronaut):
    secret = env.outside / "secret"
    secret.mkdir()
    (secret / "private.jpg").write_bytes(jpeg(astronaut))
    src = env.read / "with-links"
    src.mkdir()
    (src / "real.jpg").write_bytes(jpeg(astronaut[::2, ::2].copy()))
    os.symlink(secret / "private.jpg", src / "file-link.jpg")
    os.symlink(secret, src / "dir-link")
    r = _submit(env, f"file://{src}", f"file://{env.write}/links")
    assert r.status_code == 202, r.text
    st = _wait(env.client, r.json()["id"])
    assert st["status"] == "done" and st["ok"] == 1, st
    out = env.write / "links"
    assert (out / "real.jpg").exists()
    assert not (out / "file-link.jpg").exists() and not (out / "dir-link").exists()


def test_folder_swapped_for_a_symlink_while_queued(env, astronaut):
    from tests.video_helpers import make_clip

    busy = env.read / "busy"
    busy.mkdir()
    make_clip(str(busy / "clip.mp4"), n_frames=120, size=(320, 240), fps=25, face=80, audio=False)
    victim = env.outside / "victim"
    victim.mkdir()
    (victim / "private.jpg").write_bytes(jpeg(astronaut))
    swap = env.read / "swap"
    swap.mkdir()
    (swap / "harmless.jpg").write_bytes(jpeg(astronaut[::4, ::4].copy()))
    first = _submit(env, f"file://{busy}", f"file://{env.write}/busy")
    second = _submit(env, f"file://{swap}", f"file://{env.write}/swap")
    assert first.status_code == 202 and second.status_code == 202, (first.text, second.text)
    (swap / "harmless.jpg").unlink()
    swap.rmdir()
    os.symlink(victim, swap)  # the job was accepted for a real folder; it now points outside the prefix
    st = _wait(env.client, second.json()["id"])
    assert st["ok"] == 0, st
    assert not (env.write / "swap" / "private.jpg").exists()
    _wait(env.client, first.json()["id"])


def test_originals_are_never_written(env, astronaut):
    src, other = env.read / "set-a", env.read / "set-b"
    src.mkdir()
    other.mkdir()
    (src / "a.jpg").write_bytes(jpeg(astronaut[::2, ::2].copy()))
    original = jpeg(astronaut)
    (other / "a.jpg").write_bytes(original)
    r = _submit(env, f"file://{src}", f"file://{other}")  # output = another input folder
    assert r.status_code == 403, r.text
    time.sleep(0.5)
    assert (other / "a.jpg").read_bytes() == original


def test_output_inside_input_is_refused_after_normalizing():
    from jobs.service.app import _overlaps

    assert _overlaps("file:///srv/in//j2", "file:///srv/in/j2/o")
    assert _overlaps("file:///srv/in", "file:///srv/in//j2/o")
    assert _overlaps("s3://b/in/", "s3://b//in/x")
    assert not _overlaps("file:///srv/in", "file:///srv/input")


def test_long_names_are_published(env, astronaut):
    src = env.read / "long"
    src.mkdir()
    name = "n" * 230 + ".jpg"  # 234 bytes: legal on ext4/xfs, too long once a temp suffix is added
    (src / name).write_bytes(jpeg(astronaut[::2, ::2].copy()))
    r = _submit(env, f"file://{src}", f"file://{env.write}/long")
    assert r.status_code == 202, r.text
    st = _wait(env.client, r.json()["id"])
    assert (st["status"], st["ok"], st["failed"]) == ("done", 1, 0), st
    assert (env.write / "long" / name).exists()
    assert not [p for p in (env.write / "long").iterdir() if p.name.startswith(".")]


def test_one_key_cannot_fill_the_job_queue(env, astronaut):
    from tests.video_helpers import make_clip

    src = env.read / "quota"
    src.mkdir()
    make_clip(str(src / "clip.mp4"), n_frames=60, size=(320, 240), fps=25, face=80, audio=False)
    codes, ids = [], []
    for i in range(5):
        r = _submit(env, f"file://{src}", f"file://{env.write}/quota-{i}")
        codes.append(r.status_code)
        if r.status_code == 202:
            ids.append(r.json()["id"])
    assert codes.count(202) == 2 and codes.count(429) == 3, codes
    r = _submit(env, f"file://{src}", f"file://{env.write}/quota-other", headers=OTHER)
    assert r.status_code == 202, r.text
    for job_id in ids:
        _wait(env.client, job_id)


def test_job_errors_do_not_show_storage_endpoints(tmp_path):
    """A job whose object store cannot be reached fails with a message naming neither host nor port."""
    pytest.importorskip("s3fs")
    endpoint = "http://127.0.0.1:9"  # discard port: connection refused at once
    s = make_settings(tmp_path / "tmp", read_prefixes=["s3://bucket/in/"], write_prefixes=["s3://bucket/out/"],
                      storage_options={"key": "k", "secret": "s", "client_kwargs": {
                          "endpoint_url": endpoint, "region_name": "us-east-1"},
                          "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}})
    server = start_thread_server(s)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            r = c.post("/v1/jobs", headers=AUTH, json={"input": "s3://bucket/in/x", "output": "s3://bucket/out/y"})
            assert r.status_code == 202, r.text
            st = _wait(c, r.json()["id"])
    finally:
        server.stop()
    assert st["status"] == "failed" and st["error"], st
    assert "127.0.0.1" not in st["error"] and ":9" not in st["error"] and "bucket?" not in st["error"], st["error"]
    assert "connect" in st["error"].lower()


def test_public_message_masks_paths_hosts_and_endpoints():
    from jobs.service.errors import public_message

    msg = public_message("Could not connect to the endpoint URL: \"http://10.1.2.3:9000/bucket/key?x=1\" "
                         "while reading /srv/anon/tmp/anon-svc-abc123/input.mp4")
    assert "10.1.2.3" not in msg and "/srv/anon" not in msg and "anon-svc" not in msg, msg
    assert msg.startswith("Could not connect")


def test_overlapping_read_and_write_prefixes_are_refused_at_start(tmp_path):
    from jobs.service.app import create_app

    s = make_settings(tmp_path / "tmp", read_prefixes=[f"file://{tmp_path}/"],
                      write_prefixes=[f"file://{tmp_path}/out/"])
    with pytest.raises(ValueError, match="overlap"):
        create_app(s)


def test_paths_are_confined_at_open(tmp_path):
    """The confined filesystem itself: symlinks refused at open even when the listing was made before."""
    from jobs.service.confined import ConfinedFileSystem

    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "ok.jpg").write_bytes(b"\xff\xd8\xffok")
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    fs = ConfinedFileSystem(roots=[str(root)])
    assert [Path(p).name for p in fs.find(str(root))] == ["ok.jpg"]
    assert fs.cat_file(str(root / "d" / "ok.jpg")) == b"\xff\xd8\xffok"
    os.symlink(tmp_path / "secret.jpg", root / "d" / "link.jpg")
    with pytest.raises(PermissionError):
        fs.cat_file(str(root / "d" / "link.jpg"))
    os.rename(root / "d", root / "d-real")
    os.symlink(tmp_path, root / "d")  # a parent directory swapped for a symlink
    with pytest.raises(PermissionError):
        fs.cat_file(str(root / "d" / "secret.jpg"))
    with pytest.raises(PermissionError):
        fs.open(str(tmp_path / "secret.jpg"), "rb")  # outside every root
    fs.pipe_file(str(root / "d-real" / "new.jpg"), b"x")
    assert (root / "d-real" / "new.jpg").read_bytes() == b"x"
    with pytest.raises(PermissionError):
        fs.pipe_file(str(root / "d" / "planted.jpg"), b"x")
    assert not (tmp_path / "planted.jpg").exists()
