"""Prometheus metrics for the service, in a registry of its own (several apps in one process stay separate)."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("anon_http_requests", "HTTP requests", ["method", "route", "status"], registry=r)
        self.latency = Histogram("anon_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("anon_http_requests_in_flight", "HTTP requests being served", registry=r)
        self.assets = Counter("anon_assets", "Assets processed", ["source", "media_type", "status"], registry=r)
        self.jobs = Counter("anon_jobs", "Archive jobs finished", ["status"], registry=r)
        self.ws_connections = Gauge("anon_ws_connections", "Open stream connections", registry=r)
        self.ws_frames = Counter("anon_ws_frames", "Stream frames by outcome", ["result"], registry=r)
        self.work_busy = Gauge("anon_work_in_progress", "Work handed to the anonymization threads and not yet "
                               "finished (abandoned work past its deadline included)", registry=r)
        self.ws_latency = Histogram("anon_ws_frame_latency_seconds", "Stream frame latency (receive to sent)",
                                    buckets=_LATENCY_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times HTTP requests by route template (never by raw path, whose
    cardinality a client controls)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        t0 = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, name, str(status["code"])).inc()
            self.metrics.latency.labels(method, name).observe(time.perf_counter() - t0)
