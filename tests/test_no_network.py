"""Nothing phones home (issue 17): `anon anonymize` on an image, a video (with its audio track) and an audio file,
with every detector the `full` policy loads, under `strace -f -e trace=connect`: any connect outside loopback or
a local socket fails the test, and so does onnxruntime's telemetry queue appearing in the (private) home folder.

The child gets none of the offline variables from this process (conftest, the Makefile and CI set some): the
product has to set them itself. strace is installed by `.ci/run` (as root) and `make setup`; the test installs
nothing and is skipped only when strace is missing."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from anon_core.offline import OFFLINE_ENV

ROOT = Path(__file__).resolve().parent.parent
STRACE = shutil.which("strace")

pytestmark = pytest.mark.skipif(STRACE is None, reason="strace is not installed (`apt-get install -y strace`; "
                                                       ".ci/run installs it when run as root)")

CONNECT = re.compile(r"connect\(\d+, \{sa_family=(?P<family>AF_\w+)(?P<rest>.*?)\}")
ADDR = re.compile(r'inet_(?:addr|pton)\((?:AF_INET6, )?"(?P<ip>[^"]+)"')


def outside_connects(trace: str) -> list[str]:
    """strace lines of connects that could leave the machine (not AF_UNIX/AF_NETLINK, not loopback)."""
    bad = []
    for line in trace.splitlines():
        m = CONNECT.search(line)
        if not m:
            continue
        if m.group("family") in ("AF_UNIX", "AF_LOCAL", "AF_NETLINK", "AF_UNSPEC"):
            continue  # AF_UNSPEC: a socket being disassociated, no traffic
        a = ADDR.search(m.group("rest"))
        ip = ipaddress.ip_address(a.group("ip")) if a else None
        if ip is not None and (ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped and ip.ipv4_mapped.is_loopback)):
            continue
        bad.append(line.strip())
    return bad


def test_outside_connects_parser():
    lines = "\n".join([
        '1 connect(3, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT',
        '1 connect(3, {sa_family=AF_INET, sin_port=htons(8265), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
        '1 connect(3, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
        '1 connect(3, {sa_family=AF_UNSPEC, sa_data="\\0\\0"}, 16) = 0',
        '1 connect(8, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, 16) = 0',
        '1 connect(8, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "2603:1030::1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
    ])
    assert [b.split("htons(")[1][:3] for b in outside_connects(lines)] == ["53)", "443"]


def _media(inp: Path) -> None:
    from skimage import data

    from tests.test_audio import SR, utterance, write
    from tests.video_helpers import make_clip

    inp.mkdir(parents=True)
    Image.fromarray(data.astronaut()).resize((256, 256)).save(inp / "photo.jpg", quality=90)
    make_clip(str(inp / "clip.mp4"), "mp4", n_frames=24, audio=True)
    write(inp / "speech.wav", utterance(), SR, "wav", "pcm_s16le")


def _traced_anonymize(tmp_path: Path, inp: Path, *sets: str) -> tuple[str, Path]:
    """Run `anon anonymize` under strace with a private HOME and no offline variables; (trace text, output)."""
    out, home = tmp_path / "out", tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV and not k.startswith("XDG_")}
    env.update(HOME=str(home), ANON_VOICE_KEY="no-network-test-key", ANON_ORT_THREADS="1")
    trace = tmp_path / "connect.trace"
    cmd = [STRACE, "-f", "-qq", "-e", "trace=connect", "-o", str(trace), sys.executable, "-m", "jobs.cli",
           "anonymize", str(inp), "-o", str(out), "--no-progress"]
    for kv in sets:
        cmd += ["--set", kv]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = trace.read_text()
    assert outside_connects(text) == [], "connections outside loopback:\n" + "\n".join(outside_connects(text)[:20])
    ms = home / ".cache" / "Microsoft"
    assert not ms.exists(), f"onnxruntime telemetry queue written: {sorted(str(p) for p in ms.rglob('*'))}"
    return text, out


def test_anonymize_image_video_audio_connects_nowhere(tmp_path):
    inp = tmp_path / "in"
    _media(inp)
    _, out = _traced_anonymize(tmp_path, inp, "policy=full")
    for rel in ("photo.jpg", "clip.mp4", "speech.wav"):
        assert (out / rel).is_file(), f"{rel} not anonymized"


def test_openvino_device_connects_nowhere(tmp_path):
    """`import openvino` loads its model converter, which reports to Google Analytics at import time unless held
    back (anon_core.offline.import_openvino)."""
    pytest.importorskip("openvino")
    inp = tmp_path / "in"
    inp.mkdir()
    from skimage import data

    Image.fromarray(data.astronaut()).resize((256, 256)).save(inp / "photo.jpg", quality=90)
    _, out = _traced_anonymize(tmp_path, inp, "policy=faces", "device=openvino")
    assert (out / "photo.jpg").is_file()


def test_strace_control_sees_an_outside_connect(tmp_path):
    """The instrument works: a UDP connect to a documentation address (sends no packet) is seen and flagged,
    a loopback one is seen and allowed."""
    code = ("import socket\n"
            "for host in ('127.0.0.1', '192.0.2.1'):\n"
            "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((host, 9)); s.close()\n")
    trace = tmp_path / "control.trace"
    subprocess.run([STRACE, "-f", "-qq", "-e", "trace=connect", "-o", str(trace), sys.executable, "-c", code],
                   check=True, timeout=60)
    text = trace.read_text()
    assert "127.0.0.1" in text
    assert [("192.0.2.1" in b) for b in outside_connects(text)] == [True]
