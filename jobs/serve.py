"""`anon serve`: REST + WebSocket service for CMS/DAM integration and continuous (streaming) mode.

The service adds no anonymization logic: every asset goes through `anon_core.pipeline.Anonymizer`, archive jobs
through `anon_core.runner.run` (or the Ray Data job), stream frames through `Anonymizer.detect/mask` plus the
core's `MaskScheduler`.

    ANON_API_KEYS=key1,key2 anon serve --host 127.0.0.1 --port 8080 --set policy=faces \\
        --read-prefix s3://archive/in/ --write-prefix s3://archive/out/

HTTP API (every route except /healthz, /docs, /openapi.json needs `Authorization: Bearer <key>`; /metrics too
unless `--metrics-public`):

- `POST /v1/anonymize[?policy=default|full|faces][&audit=header|full]` - body: the raw media (any content type)
  or multipart/form-data with a part named `file`. The body is streamed to a private temp dir (0700) in chunks,
  never held whole (images are read once for decoding). 200: the anonymized bytes (same format), audit summary as
  compact JSON in the `X-Anon-Audit` header; `audit=full` answers `multipart/mixed`: a JSON part with the full
  audit record, then the media part. 413 above the size limit, 422 unsupported/corrupt media (JSON `detail` is
  the one-line error, without server paths or hosts; nothing else is returned: fail closed), 408 when the body
  stalls or trickles below the minimum rate, 429 when the key has too many requests in progress, 503 when all
  request slots or workers are busy (work abandoned after a 504 counts until it has stopped), 504 past the
  duration limit (the work is cancelled too). Image pixel counts are checked from the header before decoding.
  The temp dir is deleted after the request, on errors and on client disconnects too.
- `POST /v1/jobs` `{"input": URI, "output": URI, "policy": "faces", "callback_url": "https://..."}` -> 202 with
  the job; `input` must lie under a read prefix (`--read-prefix`, `ANON_READ_PREFIXES`; the older
  `--allow-prefix`/`ANON_ALLOWED_PREFIXES` count as read prefixes) and `output` under a write prefix
  (`--write-prefix`, `ANON_WRITE_PREFIXES`), else 403; read and write prefixes may not overlap (checked at
  start-up), so originals are never overwritten. No http(s), no `::` chaining, no `..`, no `file://` unless a
  `file://` prefix was configured; local jobs never follow a symlink below a prefix (checked when listing and
  again at every open); callbacks only to `ANON_WEBHOOK_HOSTS`. Jobs run in a bounded pool (`--job-workers`,
  429 when the queue or the key's share of it is full) with the local runner or, with `--job-executor ray`,
  the Ray Data job as a child process.
- `GET /v1/jobs/{id}` - status (queued|running|done|failed), asset counts, run id, manifest path. Only the key
  that submitted a job can see it.
- `GET /healthz` (open), `GET /metrics` (Prometheus text), `GET /docs` + `/openapi.json` (FastAPI).

WebSocket `/v1/stream` (continuous mode), same Bearer header on the handshake (401 without it). Query:
`policy`, `backpressure=drop|queue` (default drop), `queue=N` (pending frames, default 4), `fps` (for the
tracker's time constants, default 25), `lookahead_s` (default 0: every frame is returned as soon as it is done;
> 0 lets masks start before a face's first detection at the cost of that much latency), `trail_s` (masks persist
this long after a face is lost; default the video settings' value), `quality` (JPEG, default 85).

- client -> server, binary: 8-byte little-endian signed int64 timestamp (microseconds, the client's clock) followed
  by one JPEG frame.
- client -> server, text JSON: `{"type": "stats"}` (server answers a stats message) or `{"type": "end"}` (server
  finishes the queued frames, sends the final stats and closes with 1000).
- server -> client, binary: the same 8-byte timestamp + the anonymized JPEG, in the order frames arrived.
- server -> client, text JSON: `{"type": "dropped", "timestamps": [...]}` (drop policy: the oldest pending
  frames were discarded unprocessed), `{"type": "error", "timestamp": t, "error": "..."}` (that frame could not
  be analysed and is NOT returned: fail closed), `{"type": "stats", "final": bool, "frames_in", "frames_out",
  "dropped", "errors", "latency_ms": {"p50", "p95", "max", "mean"}, "process_ms": {...}, ...}`. Latency is measured
  server-side from receiving a frame to having sent its result (queueing included).

Backpressure: `queue` keeps reading (pings and control messages are answered) until `queue` frames or
`ws_read_ahead_bytes` of frames are pending, then stops reading the socket (TCP pushes back on the client;
nothing is lost); `drop` keeps reading and discards the oldest pending frames, reporting them. Each frame's
size is read from its JPEG header before decoding: frames above `ws_max_frame_pixels`, or whose decoded size
times the frames held for look-ahead exceeds `ws_decoded_budget_bytes`, get an error message and are not
decoded. Tracking state
(tracks, trail fill) lives per connection and restarts when the frame size changes. Idle connections close after
`--ws-idle-s` seconds.

TLS: the service speaks plain HTTP; terminate TLS at a reverse proxy (nginx example in infra/README-service.md),
bind the service to 127.0.0.1 or a private network, and pass `--proxy-headers`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # `python jobs/serve.py` imports the repo beside it
    sys.path.insert(0, str(_ROOT))

from jobs.argdefaults import Flag, defaults_formatter, given  # noqa: E402
from jobs.service.settings import ServiceSettings  # noqa: E402

__all__ = ["ServiceSettings", "add_arguments", "cmd_serve", "create_app"]


def create_app(settings: ServiceSettings | None = None):
    """The FastAPI app (imported lazily so `anon --help` does not load FastAPI)."""
    from jobs.service.app import create_app as _create

    return _create(settings)


# -- command line ------------------------------------------------------------------------------------------------

# Flags that set ServiceSettings fields (jobs/service/settings.py holds the defaults; env vars come between).
FLAGS = {"workers": Flag("workers"), "job_workers": Flag("job_workers"), "job_executor": Flag("job_executor"),
         "max_body_mb": Flag("max_body_bytes", lambda mb: int(mb * (1 << 20)), lambda b: f"{b / (1 << 20):g}"),
         "request_timeout_s": Flag("request_timeout_s"), "ws_idle_s": Flag("ws_idle_s"), "tmp_dir": Flag("tmp_dir")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = defaults_formatter("jobs.service.settings:ServiceSettings", FLAGS)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (see conf/)")
    p.add_argument("--read-prefix", action="append", default=[], metavar="URI",
                   help="URI prefix job inputs may come from (repeatable; also ANON_READ_PREFIXES)")
    p.add_argument("--write-prefix", action="append", default=[], metavar="URI",
                   help="URI prefix job outputs may go to, disjoint from the read prefixes (ANON_WRITE_PREFIXES)")
    p.add_argument("--allow-prefix", action="append", default=[], metavar="URI",
                   help="older name of --read-prefix (read-only)")
    p.add_argument("--webhook-host", action="append", default=[], help="host[:port] job callbacks may go to")
    p.add_argument("--keys-file", action="append", default=[], help="API keys, one a line (or sha256:<hex>)")
    p.add_argument("--workers", type=int, help="anonymization threads")
    p.add_argument("--job-workers", type=int, help="archive jobs run at once")
    p.add_argument("--job-executor", choices=["local", "ray"], help="where archive jobs run")
    p.add_argument("--max-body-mb", type=float, help="upload size limit in MiB")
    p.add_argument("--request-timeout-s", type=float, help="per-request time limit")
    p.add_argument("--ws-idle-s", type=float, help="close idle stream connections after this many seconds")
    p.add_argument("--tmp-dir", help="root of the private per-request temp dirs (default: the system's)")
    p.add_argument("--metrics-public", action="store_true", help="serve /metrics without a key")
    p.add_argument("--proxy-headers", action="store_true", help="trust X-Forwarded-* from --forwarded-allow-ips")
    p.add_argument("--forwarded-allow-ips", default="127.0.0.1")
    p.add_argument("--log-level", default="warning")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    s = ServiceSettings.from_env(**given(args, FLAGS))
    s.config_sets = list(args.set)
    s.allowed_prefixes += args.allow_prefix
    s.read_prefixes += args.read_prefix
    s.write_prefixes += args.write_prefix
    s.webhook_hosts += args.webhook_host
    s.api_key_files += args.keys_file
    s.metrics_public = s.metrics_public or args.metrics_public
    try:
        app = create_app(s)
    except ValueError as exc:
        print(f"anon serve: {exc}", file=sys.stderr)
        return 2
    from jobs.service.server import uvicorn_config

    config = uvicorn_config(app, s, host=args.host, port=args.port, log_level=args.log_level,
                            proxy_headers=args.proxy_headers, forwarded_allow_ips=args.forwarded_allow_ips)
    uvicorn.Server(config).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python jobs/serve.py ...` = `anon serve ...` (its own parser: importing jobs.cli here would be a cycle)."""
    import logging
    import os

    from anon_core.offline import go_offline

    go_offline()
    logging.basicConfig(level=os.environ.get("ANON_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="anon serve", description="REST + WebSocket service (API keys from ANON_API_KEYS)")
    add_arguments(p)
    return cmd_serve(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
