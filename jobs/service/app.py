"""The FastAPI app behind `anon serve` (routes, auth, uploads, jobs, stream); see jobs/serve.py for the API."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from enum import StrEnum
from typing import Any, Literal

import fsspec
from fastapi import Depends, FastAPI, HTTPException, Path, Request, Security, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import ClientDisconnect

from anon_core.audit import AuditRecord
from anon_core.config import POLICIES
from anon_core.deadline import Deadline
from anon_core.media.probe import sniff
from jobs.service.admission import Admission
from jobs.service.errors import public_audit, public_message
from jobs.service.guard import GuardMiddleware
from jobs.service.jobs import JobManager, JobSpec, LocalExecutor, QueueFull, RayExecutor, post_webhook
from jobs.service.metrics import Metrics, MetricsMiddleware
from jobs.service.security import JobUris, KeyStore, UriRefused, bearer_token, check_webhook, overlaps
from jobs.service.settings import ServiceSettings
from jobs.service.stream import FrameWorker, StreamLimits, StreamOptions, run_stream
from jobs.service.uploads import (
    BadUpload,
    BodyStalled,
    BodyTooLarge,
    Pace,
    private_workdir,
    receive_body,
    remove_stale_workdirs,
    remove_workdir,
)

log = logging.getLogger("anon.service")

Policy = StrEnum("Policy", {k: k for k in POLICIES})  # type: ignore[misc]

MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "tiff": "image/tiff", "mp4": "video/mp4",
        "mov": "video/quicktime", "webm": "video/webm", "mkv": "video/x-matroska", "wav": "audio/wav",
        "flac": "audio/flac", "ogg": "audio/ogg", "mp3": "audio/mpeg", "m4a": "audio/mp4"}
EXT = {"jpeg": ".jpg", "tiff": ".tif"}
# AssetError codes -> HTTP status; anything else (internal) is a 500.
ERROR_STATUS = {"unsupported": 422, "corrupt": 422, "asset_error": 422, "too_large": 413, "resources": 503}


class Engines:
    """One loaded Anonymizer (and config) per policy, created on first use; detectors are shared by threads
    (onnxruntime sessions are thread-safe and the detectors keep no per-call state)."""

    def __init__(self, config_sets: list[str], max_pixels: int | None = None) -> None:
        self.sets = list(config_sets)
        self.max_pixels = max_pixels
        self._configs: dict[str, Any] = {}
        self._anonymizers: dict[str, Any] = {}
        self._lock = threading.Lock()  # Hydra's compose uses global state
        self.default_policy = self.config(None).policy

    def config(self, policy: str | None):
        key = policy or ""
        if key not in self._configs:
            from jobs.config import load_config

            with self._lock:
                if key not in self._configs:
                    cfg = load_config(self.sets + ([f"policy={policy}"] if policy else []))
                    if self.max_pixels:  # the service's decoded-size budget, checked from headers before decoding
                        cfg.limits.max_pixels = min(cfg.limits.max_pixels, self.max_pixels)
                    self._configs[key] = cfg
        return self._configs[key]

    def get(self, policy: str):
        if policy not in self._anonymizers:
            from anon_core.pipeline import Anonymizer

            cfg = self.config(policy)
            with self._lock:
                if policy not in self._anonymizers:
                    self._anonymizers[policy] = Anonymizer(cfg)
        return self._anonymizers[policy]

    @property
    def loaded(self) -> list[str]:
        return sorted(self._anonymizers)


class ErrorBody(BaseModel):
    detail: str | list[dict[str, Any]]
    code: str | None = None
    audit: dict[str, Any] | None = None


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str = Field(min_length=1, max_length=2048, description="URI under an allowed prefix")
    output: str = Field(min_length=1, max_length=2048, description="URI under an allowed prefix")
    policy: Policy | None = None
    callback_url: str | None = Field(default=None, max_length=2048)


class JobStatus(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed"]
    input: str
    output: str
    policy: str
    callback_url: str | None = None
    run_id: str | None = None
    assets: int | None = None
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    manifest: str | None = None
    error: str | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    seconds: float | None = None
    callback_status: str | None = None


def compact_audit(rec) -> dict:
    return {"status": rec.status, "error": rec.error, "error_code": rec.error_code, "media_type": rec.media_type,
            "format": rec.format, "width": rec.width, "height": rec.height, "frames": rec.frames,
            "duration_s": rec.duration_s, "policy": rec.policy, "config_hash": rec.config_hash,
            "detections": rec.detections, "masked": rec.masked, "metadata_removed": rec.metadata_removed,
            "input_sha256": rec.input_sha256, "output_sha256": rec.output_sha256,
            "total_ms": round(rec.timings_ms.get("total", 0.0), 1)}


def _header_json(d: dict) -> str:
    return json.dumps(d, separators=(",", ":"), ensure_ascii=True, default=str)


def create_app(settings: ServiceSettings | None = None):
    """Build the FastAPI app (tests and `anon serve` both use this)."""
    s = settings or ServiceSettings.from_env()
    keys = KeyStore.from_sources(",".join(s.api_keys), s.api_key_files)
    s.api_keys = []  # only the digests stay in memory
    if not len(keys):
        raise ValueError("no API keys: set ANON_API_KEYS (comma separated) or ANON_API_KEYS_FILE")
    if s.allowed_prefixes:
        log.warning("allowed_prefixes / --allow-prefix are read-only now; outputs need --write-prefix")
    uris = JobUris(list(s.allowed_prefixes) + list(s.read_prefixes), s.write_prefixes)  # ValueError: overlap
    engines = Engines(s.config_sets, s.max_image_pixels)
    metrics = Metrics()
    pool = ThreadPoolExecutor(max_workers=max(1, s.workers), thread_name_prefix="anon-work")
    admission = Admission(s.max_pending, s.max_pending_per_key, s.max_work_queued)
    metrics.work_busy.set_function(lambda: admission.work)
    ws_open: dict[str, int] = {}
    denied = _RateLimitedLog(60.0)
    remove_stale_workdirs(s.tmp_dir)  # a killed predecessor may have left request dirs behind

    def on_job_finish(job) -> None:
        metrics.jobs.labels(job.status).inc()
        if job.spec.callback_url:
            post_webhook(job)

    if s.job_executor == "ray":
        executor = RayExecutor()
    else:
        executor = LocalExecutor(engines.config, s.storage_options, read_roots=uris.read.local_roots(),
                                 write_roots=uris.write.local_roots())
    jobs = JobManager(executor, workers=s.job_workers, max_queued=s.max_jobs_queued, on_finish=on_job_finish,
                      max_per_owner=s.max_jobs_per_key)

    @asynccontextmanager
    async def lifespan(app):
        if s.preload:  # first request should not pay for model loading
            await asyncio.get_running_loop().run_in_executor(None, engines.get, engines.default_policy)
        yield
        jobs.shutdown()
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="anon", version="0.1.0", lifespan=lifespan,
                  description="Anonymization of images, video and audio (faces, plates, persons, voices, metadata).")
    app.add_middleware(GuardMiddleware, check_key=lambda h: keys.check(bearer_token(h)), idle_s=s.upload_idle_s,
                       open_paths={"/metrics"} if s.metrics_public else set())
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.settings, app.state.engines, app.state.jobs = s, engines, jobs
    bearer = HTTPBearer(auto_error=False, description="API key")

    def require_key(creds: HTTPAuthorizationCredentials | None = Security(bearer)) -> str:
        ident = keys.check(creds.credentials if creds else None)
        if ident is None:
            raise HTTPException(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})
        return ident

    def metrics_auth(request: Request) -> None:
        if not s.metrics_public and keys.check(bearer_token(request.headers.get("authorization"))) is None:
            raise HTTPException(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})

    err = {"model": ErrorBody}
    auth_errors = {401: err}

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "default_policy": engines.default_policy, "loaded_policies": engines.loaded}

    @app.get("/metrics", tags=["ops"], dependencies=[Depends(metrics_auth)], responses=auth_errors,
             response_class=Response)
    def get_metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    binary = {"schema": {"type": "string", "format": "binary"}}
    upload_body = {"requestBody": {"required": True, "content": {
        "application/octet-stream": binary, "image/jpeg": binary, "image/png": binary, "video/mp4": binary,
        "audio/wav": binary,
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
    }}}
    media_out = {m: binary for m in sorted(set(MIME.values()))} | {"multipart/mixed": binary}

    @app.post("/v1/anonymize", tags=["anonymize"], response_class=Response, openapi_extra=upload_body,
              responses={200: {"content": media_out, "description": "the anonymized media; audit in X-Anon-Audit"},
                         **auth_errors, 400: err, 408: err, 413: err, 422: err, 429: err, 500: err, 503: err, 504: err})
    async def anonymize(request: Request, ident: str = Depends(require_key), policy: Policy | None = None,
                        audit: Literal["header", "full"] = "header") -> Response:
        """Anonymize one image, video or audio file (raw body or multipart part `file`)."""
        refused = admission.enter(ident)
        if refused == 503:
            raise HTTPException(503, "all request slots are busy", headers={"Retry-After": "5"})
        if refused == 429:
            raise HTTPException(429, "this key has too many requests in progress", headers={"Retry-After": "5"})
        try:
            return await _anonymize(request, ident, policy, audit)
        finally:
            admission.leave(ident)

    async def _anonymize(request: Request, ident: str, policy: Policy | None, audit: str) -> Response:
        deadline_at = time.monotonic() + s.request_timeout_s
        workdir = private_workdir(s.tmp_dir)
        handed_off = False
        pol = policy.value if policy else engines.default_policy
        loop = asyncio.get_running_loop()
        try:
            upload = os.path.join(workdir, "upload")
            limit = min(s.max_body_bytes, engines.config(pol).limits.max_bytes)
            pace = Pace(s.upload_idle_s, s.upload_min_bytes_s, s.upload_grace_s)
            try:
                size = await asyncio.wait_for(receive_body(request, upload, limit, pace), s.request_timeout_s)
            except BodyTooLarge as exc:
                return _error(413, str(exc), "too_large")
            except BadUpload as exc:
                return _error(422, str(exc), "bad_upload")
            except BodyStalled as exc:
                return _error(408, str(exc), "timeout")
            except TimeoutError:
                return _error(408, "upload took longer than the request time limit", "timeout")
            except ClientDisconnect:
                return _error(400, "client disconnected during upload", "disconnect")
            with open(upload, "rb") as fh:
                media = sniff(fh.read(64))
            rec = AuditRecord(run_id=f"service-{uuid.uuid4().hex[:12]}", input_uri="upload", relative_path="upload")
            if media.kind == "image" and size > s.max_image_bytes:
                return _error(413, f"image is {size} bytes: above the limit of {s.max_image_bytes}", "too_large")
            path = os.path.join(workdir, "input" + EXT.get(media.format, "." + media.format))
            os.replace(upload, path)
            try:  # not on the work pool: loading must not queue behind (possibly abandoned) work
                anonymizer = await loop.run_in_executor(None, engines.get, pol)
            except Exception as exc:  # e.g. a policy whose models are not installed on this server
                log.exception("policy %s cannot be loaded", pol)
                return _error(503, f"policy {pol!r} is not available: {type(exc).__name__}", "unavailable")
            if not admission.take_work():
                return _error(503, "all workers are busy", "busy", headers={"Retry-After": "5"})
            # The work gets a deadline of its own that the request cancels when it gives up: the thread stops
            # at its next check (per packet for video) instead of running on after the 504.
            work_deadline = Deadline.within(max(0.1, deadline_at - time.monotonic()),
                                            anonymizer.config.limits.asset_timeout_s)
            fut = pool.submit(_process, anonymizer, fsspec.filesystem("file"), path, media, workdir, rec,
                              work_deadline)
            fut.add_done_callback(admission.release_work)
            try:
                kind, out = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)),
                                                   max(0.1, deadline_at - time.monotonic()))
            except (TimeoutError, asyncio.CancelledError) as exc:
                work_deadline.cancel()  # the request gave up (time limit, or its task was cancelled): so does the work
                if not fut.cancel():  # already running: the thread still owns the dir until it stops
                    fut.add_done_callback(lambda _f: remove_workdir(workdir))
                    handed_off = True
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return _error(504, "processing took longer than the request time limit", "timeout")
            metrics.assets.labels("request", rec.media_type, rec.status).inc()
            if out is None:
                status = ERROR_STATUS.get(rec.error_code or "", 500)
                if rec.error_code == "timeout":
                    status = 504
                return _error(status, rec.error or "failed", rec.error_code, compact_audit(rec))
            headers = {"X-Anon-Audit": _header_json(compact_audit(rec)), "Cache-Control": "no-store"}
            mime = MIME.get(rec.format or "", "application/octet-stream")
            if kind == "bytes":
                if audit == "full":
                    return _mixed(rec, mime, iter([out]), headers)
                return Response(out, media_type=mime, headers=headers)
            # Open the result, then delete the whole workdir: the open descriptor keeps the data readable until
            # the response is sent, and nothing is left on disk even if the client disconnects mid-download.
            fh = open(out, "rb")
            remove_workdir(workdir)
            headers["Content-Length"] = str(os.fstat(fh.fileno()).st_size)
            if audit == "full":
                headers.pop("Content-Length")
                return _mixed(rec, mime, _iter_file(fh), headers)
            return StreamingResponse(_iter_file(fh), media_type=mime, headers=headers)
        finally:
            if not handed_off:
                remove_workdir(workdir)

    @app.post("/v1/jobs", tags=["jobs"], status_code=202, response_model=JobStatus,
              responses={**auth_errors, 400: err, 403: err, 422: err, 429: err})
    def submit_job(req: JobRequest, ident: str = Depends(require_key)) -> dict:
        """Start an archive job over `input` writing to `output` (both under the allowed prefixes)."""
        try:
            uris.check(req.input, req.output)
            if req.callback_url:
                check_webhook(req.callback_url, s.webhook_hosts)
        except UriRefused as exc:
            raise HTTPException(403, str(exc)) from exc
        if _overlaps(req.input, req.output):
            raise HTTPException(422, "output must not be inside input (or the other way round)")
        pol = req.policy.value if req.policy else engines.default_policy
        try:
            job = jobs.submit(ident, JobSpec(req.input, req.output, pol, list(s.config_sets), req.callback_url))
        except QueueFull as exc:
            raise HTTPException(429, str(exc), headers={"Retry-After": "30"}) from exc
        return job.public()

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], response_model=JobStatus, responses={**auth_errors, 404: err})
    def get_job(job_id: str = Path(pattern=r"^[0-9a-f]{32}$"), ident: str = Depends(require_key)) -> dict:
        job = jobs.get(ident, job_id)
        if job is None:
            raise HTTPException(404, "no such job")
        return job.public()

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        ident = keys.check(bearer_token(ws.headers.get("authorization")))
        if ident is None:
            denied.warn(log, "stream handshakes refused for a missing or invalid API key")
            await _deny(ws, 401, "missing or invalid API key")
            return
        if ws_open.get(ident, 0) >= s.ws_max_per_key:
            denied.warn(log, "stream handshakes refused: a key's connection limit was reached")
            await _deny(ws, 429, "this key has too many open stream connections")
            return
        try:
            opts = _stream_options(ws.query_params, engines.default_policy, s.ws_max_queue)
        except ValueError as exc:
            await _deny(ws, 400, str(exc))
            return
        try:
            anonymizer = await asyncio.get_running_loop().run_in_executor(None, engines.get, opts.policy)
        except Exception as exc:
            log.exception("policy %s cannot be loaded", opts.policy)
            await _deny(ws, 503, f"policy {opts.policy!r} is not available: {type(exc).__name__}")
            return
        worker = FrameWorker(anonymizer, opts, anonymizer.config.limits.max_pixels)
        limits = StreamLimits(max_pixels=min(s.ws_max_frame_pixels, anonymizer.config.limits.max_pixels),
                              decoded_budget_bytes=s.ws_decoded_budget_bytes, read_ahead_bytes=s.ws_read_ahead_bytes)
        ws_open[ident] = ws_open.get(ident, 0) + 1
        try:
            await ws.accept()
            metrics.ws_connections.inc()
            try:
                await run_stream(ws, worker, opts, pool, metrics, s.ws_idle_s, limits)
            finally:
                metrics.ws_connections.dec()
        finally:
            ws_open[ident] -= 1

    def _error(status: int, detail: str, code: str | None = None, audit_: dict | None = None,
               headers: dict | None = None) -> JSONResponse:
        # what a client sees never names the server's temp dirs, paths, hosts or storage endpoints
        audit_ = public_audit(audit_)
        headers = {**(headers or {}), **({"X-Anon-Audit": _header_json(audit_)} if audit_ else {})}
        return JSONResponse({"detail": public_message(detail), "code": code, "audit": audit_},
                            status_code=status, headers=headers)

    def _mixed(rec, mime: str, chunks: Iterator[bytes], headers: dict) -> StreamingResponse:
        boundary = uuid.uuid4().hex
        full = json.dumps(asdict(rec), default=str).encode()

        def body() -> Iterator[bytes]:
            yield f"--{boundary}\r\nContent-Type: application/json\r\n\r\n".encode() + full + b"\r\n"
            yield f"--{boundary}\r\nContent-Type: {mime}\r\n\r\n".encode()
            yield from chunks
            yield f"\r\n--{boundary}--\r\n".encode()

        return StreamingResponse(body(), media_type=f"multipart/mixed; boundary={boundary}", headers=headers)

    return app


def _process(anonymizer, fs, path: str, media, workdir: str, rec, deadline: Deadline) -> tuple[str, Any]:
    """Runs in a worker thread: ("bytes", data) for images, ("file", local path) for video/audio; None = failed."""
    if media.kind == "image":
        with open(path, "rb") as fh:
            return "bytes", anonymizer.process_bytes(fh.read(), rec, deadline=deadline)
    if media.kind in ("video", "audio"):
        return "file", anonymizer.process_stream(fs, path, media, rec, workdir, deadline=deadline)
    anonymizer.stamp(rec).fail("unsupported or unrecognised media (not an image, video or audio file)",
                               "unsupported")
    return "bytes", None


def _iter_file(fh, chunk: int = 1 << 20) -> Iterator[bytes]:
    with fh:
        while block := fh.read(chunk):
            yield block


def _overlaps(a: str, b: str) -> bool:
    try:
        return overlaps(a, b)
    except UriRefused:
        return True  # not comparable: refuse rather than allow


class _RateLimitedLog:
    """One WARNING per period for a repeated event, with the count since the last one (no log flood)."""

    def __init__(self, period_s: float) -> None:
        self.period_s, self.last, self.count = period_s, -math.inf, 0

    def warn(self, logger: logging.Logger, what: str) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= self.period_s:
            logger.warning("%s (%d in the last %.0f s)", what, self.count, self.period_s)
            self.last, self.count = now, 0


async def _deny(ws, status: int, detail: str) -> None:
    try:
        await ws.send_denial_response(JSONResponse({"detail": detail}, status_code=status))
    except RuntimeError:  # server without the denial-response extension: close the handshake (HTTP 403)
        await ws.close(code=1008, reason=detail)


def _stream_options(q, default_policy: str, max_queue: int):
    def num(name: str, default: float, lo: float, hi: float) -> float:
        raw = q.get(name)
        try:
            v = float(raw) if raw is not None else default
        except ValueError as exc:
            raise ValueError(f"{name} must be a number") from exc
        if not lo <= v <= hi:
            raise ValueError(f"{name} must be within [{lo}, {hi}]")
        return v

    policy = q.get("policy") or default_policy
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)}")
    bp = q.get("backpressure", "drop")
    if bp not in ("drop", "queue"):
        raise ValueError("backpressure must be drop or queue")
    trail = num("trail_s", -1, -1, 10)
    return StreamOptions(policy=policy, backpressure=bp, queue=int(num("queue", 4, 1, max_queue)),
                         fps=num("fps", 25, 1, 240), lookahead_s=num("lookahead_s", 0, 0, 2),
                         trail_s=None if trail < 0 else trail, quality=int(num("quality", 85, 10, 100)))


