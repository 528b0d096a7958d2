"""Restarts: `anon serve` as a child process, SIGKILLed in the middle of a request, then started again over the
same temp root. The new process removes what the killed one left, answers at once, and forgot nothing it
should remember (job ids are documented as in-memory only)."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx

from tests.reliability.helpers import AUTH, KEY, jpeg, leftovers, start_child_server


def test_sigkill_mid_request_then_restart(tmp_path, astronaut):
    from tests.video_helpers import make_clip

    tmp = tmp_path / "svc-tmp"
    clip = tmp_path / "long.mp4"
    make_clip(str(clip), n_frames=600, size=(320, 240), fps=25, face=80, audio=False)
    env = {"ANON_API_KEYS": KEY}
    args = ["--tmp-dir", str(tmp), "--set", "policy=faces", "--workers", "1"]
    proc, url = start_child_server(args, env, tmp_path / "serve1.log")
    try:
        threading.Thread(target=lambda: _post_quietly(url, clip.read_bytes()), daemon=True).start()
        deadline = time.monotonic() + 60
        while not [p for p in tmp.glob("anon-svc-*/input.mp4")] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(tmp.glob("anon-svc-*/input.mp4")), "the upload never reached the request dir"
        time.sleep(1.0)  # processing has started
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert leftovers(tmp), "a SIGKILLed server leaves its request dir (that is what the restart must clean)"

    proc, url = start_child_server(args, env, tmp_path / "serve2.log")
    try:
        assert [p for p in leftovers(tmp) if p.startswith("anon-svc-")] == []
        r = httpx.post(url + "/v1/anonymize", content=jpeg(astronaut), headers=AUTH, timeout=120)
        assert r.status_code == 200, r.text
        assert httpx.get(url + "/v1/jobs/" + "0" * 32, headers=AUTH, timeout=10).status_code == 404
        assert leftovers(tmp) == []
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except Exception:
            proc.kill()


def _post_quietly(url: str, body: bytes) -> None:
    try:
        httpx.post(url + "/v1/anonymize", content=body, headers=AUTH, timeout=120)
    except httpx.HTTPError:
        pass  # the server is killed under this request on purpose
