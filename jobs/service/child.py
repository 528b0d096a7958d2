"""`anon serve` as a child process on a free loopback port, returned once /healthz answers.

Shared by the soak and throughput benchmarks and the restart tests: one start-up loop, bounded in time, that
notices a child which died instead of waiting out the deadline."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(args: list[str], env: dict[str, str], log_path: Path | None = None, timeout_s: float = 240
                ) -> tuple[subprocess.Popen, str]:
    """Run `python -m jobs.cli serve --host 127.0.0.1 --port P *args`; (process, base URL) once healthy.

    The child binds the port after we released it: a race with another process is possible but unlikely on
    loopback. Output goes to `log_path` (inherited when None). Raises RuntimeError if the child exits or does not
    answer in time (the child is killed then)."""
    import httpx

    port = free_port()
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    logf = open(log_path, "ab") if log_path else None  # noqa: SIM115 (the child writes to it until it exits)
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                             *args], cwd=ROOT, env=full_env, stdout=logf, stderr=subprocess.STDOUT if logf else None)
    if logf:
        logf.close()  # the child holds its own descriptor
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path else ""
            raise RuntimeError(f"anon serve exited with {proc.returncode}: {tail}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise RuntimeError(f"anon serve did not answer /healthz within {timeout_s:.0f} s")
