"""Watch erasure is confined (issue 17, High): a request can only delete an output this watcher's manifest says
it published, resolved under OUT; never a manifest part, never anything outside OUT (`..`, absolute paths,
symlinks out). Before the fix, `{"key": "../victim/photo.jpg"}` deleted a file beside OUT and a key naming a
manifest part deleted the audit log."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from tests.test_watch import Local, png, rows, wait_for


def _start(tmp: Path, anonymizer, **kw):
    from anon_core.watch import Watcher, WatchSettings

    w = Watcher(WatchSettings(str(tmp / "in"), str(tmp / "out"), interval_s=0.1, flush_s=0.05, **kw),
                anonymizer=anonymizer)
    th = threading.Thread(target=w.run, daemon=True)
    th.start()
    return w, th


def _request(b: Local, name: str, keys: list[str]) -> Path:
    req = Path(b.inp) / "_erasure" / name
    req.parent.mkdir(parents=True, exist_ok=True)
    req.write_text("".join(json.dumps({"key": k}) + "\n" for k in keys))
    return req


def test_erasure_request_cannot_leave_out_or_touch_manifests(tmp_path, anonymizer):
    b = Local(tmp_path)
    victim = tmp_path / "victim" / "photo.jpg"  # beside OUT: what the traversal key names
    victim.parent.mkdir()
    victim.write_bytes(b"not ours")
    b.put("a.png", png(1))
    b.put("cam/b.png", png(3))
    w, th = _start(tmp_path, anonymizer)
    try:
        wait_for(lambda: w.counts["ok"] >= 2 and list((Path(b.out) / "_manifests").rglob("part-*.parquet")), 30,
                 "2 outputs and a manifest part")
        part = next((Path(b.out) / "_manifests").rglob("part-*.parquet"))
        part_key = part.relative_to(b.out).as_posix()
        stray = Path(b.out) / "notours.png"  # in OUT, but never published by this watcher
        stray.write_bytes(png(5))
        # cam/ in OUT swapped for a symlink to a folder outside OUT that holds a file of the same name
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "b.png").write_bytes(b"outside OUT")
        os.rename(Path(b.out) / "cam", tmp_path / "cam.moved")
        os.symlink(elsewhere, Path(b.out) / "cam")
        req = _request(b, "r.jsonl", ["../victim/photo.jpg", str(victim), part_key, "notours.png", "cam/b.png",
                                      "a.png"])
        done = Path(str(req) + ".done.json")
        wait_for(done.exists, 30, "request marked done")
    finally:
        w.stop()
        th.join(timeout=30)
    assert victim.read_bytes() == b"not ours"
    assert part.exists()
    assert stray.exists()
    assert (elsewhere / "b.png").read_bytes() == b"outside OUT"
    assert not (Path(b.out) / "a.png").exists()  # the one legitimate key is erased
    summary = json.loads(done.read_text())
    refused = {r["key"] for r in summary["refused"]}
    assert {"../victim/photo.jpg", part_key} <= refused
    assert "a.png" in summary["keys"] and "../victim/photo.jpg" not in summary["keys"]
    by = {r["relative_path"]: r for r in sorted(rows(b), key=lambda r: r["finished_at"])}
    assert by["a.png"]["status"] == "erased" and by["a.png"]["extra"]["erasure"]["deleted"]
    assert by["cam/b.png"]["status"] == "erased" and not by["cam/b.png"]["extra"]["erasure"]["deleted"]
    assert "leaves the output root" in by["cam/b.png"]["extra"]["erasure"]["not_deleted"]
    assert not by["notours.png"]["extra"]["erasure"]["deleted"]
    assert not any(k.startswith("..") or k.startswith("_manifests") for k in by)


def test_queue_event_cannot_name_a_file_outside_the_input(tmp_path, anonymizer):
    """A storage event is untrusted too: `../victim/photo.png` is neither read nor published outside OUT (a guard:
    before the fix this was refused only by accident, `..` looking like a hidden file's name)."""
    b = Local(tmp_path)
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "photo.png").write_bytes(png(0))
    b.put("a.png", png(1))
    q = tmp_path / "queue"
    q.mkdir()
    (q / "1.jsonl").write_text("".join(json.dumps({"event": "created", "key": k}) + "\n"
                                       for k in ("../victim/photo.png", "a.png")))
    w, th = _start(tmp_path, anonymizer, source="queue", queue=str(q))
    try:
        wait_for(lambda: w.counts["ok"] >= 1, 30, "a.png")
        time.sleep(0.5)
    finally:
        w.stop()
        th.join(timeout=30)
    assert {r["relative_path"] for r in rows(b)} == {"a.png"}
    assert (tmp_path / "victim" / "photo.png").read_bytes() == png(0)  # not overwritten by an "output"
    assert sorted(p.name for p in (tmp_path / "victim").iterdir()) == ["photo.png"]


def test_keys_that_leave_the_root_are_not_candidates():
    from anon_core.watch import is_candidate, request_key, safe_key

    for bad in ("../victim/photo.jpg", "a/../../x.png", "/etc/x.png", "a//b.png", "./a.png", "a/./b.png", ""):
        assert not safe_key(bad) and not is_candidate(bad), bad
    assert not is_candidate("_manifests/watch/run_id=r/part-000000.parquet")
    assert not is_candidate("_manifests/x.png") and not is_candidate("sub/_erasure/x.png")
    assert is_candidate("cam0/001.png") and safe_key("a..b.png")
    assert request_key("/data/in/a/b.png", "/data/in") == "a/b.png"
    assert request_key("s3://bkt/in/a.png", "bkt/in") == "a.png"
    assert request_key("../victim/photo.jpg", "/data/in") == "../victim/photo.jpg"  # kept, then refused
