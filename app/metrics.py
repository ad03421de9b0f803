"""Prometheus metrics: the gateway's own HTTP metrics, plus what Redis holds about the queue.

* ``xplain_http_requests_total{method,route,status}`` and
  ``xplain_http_request_duration_seconds{method,route}``, by route *template*
  (``/v1/jobs/{job_id}``), so job ids never become label values; and
  ``xplain_redis_replica_shortfalls_total`` (enqueues whose ``WAIT`` timed out).
* At scrape time, from Redis: ``xplain_queue_depth{lane}`` (entries in the lane stream, queued
  or in flight), ``xplain_workers_live``, ``xplain_redis_up``, and the counters and histograms
  the workers add to the ``metrics`` hash (docs/PROTOCOL.md): ``xplain_jobs_total{method,status}``,
  ``xplain_job_seconds{method}``, ``xplain_batch_size`` and the batchers' counters
  ``xplain_forward_passes_total``, ``xplain_forward_rows_total``,
  ``xplain_forward_shared_passes_total``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.queue import Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class HttpMetrics:
    """Request counter and latency histogram in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "xplain_http_requests",
            "HTTP requests answered, by route template and status.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "xplain_http_request_duration_seconds",
            "Time to answer an HTTP request (a streamed response: until it ends).",
            ("method", "route"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )


class MetricsMiddleware:
    """Pure ASGI middleware counting every HTTP request by its matched route template."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)


class SnapshotCollector:
    """Metric families built from one ``Snapshot`` (or ``None`` when Redis is down)."""

    def __init__(self, snapshot: Snapshot | None) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Yield the families (the interface ``generate_latest`` expects)."""
        up = GaugeMetricFamily("xplain_redis_up", "Whether the gateway reached Redis (1/0).")
        up.add_metric([], 1.0 if self.snapshot is not None else 0.0)
        yield up
        if self.snapshot is None:
            return
        depth = GaugeMetricFamily(
            "xplain_queue_depth", "Jobs in a lane stream (queued or in flight).", labels=["lane"]
        )
        for lane, n in sorted(self.snapshot.depths.items()):
            depth.add_metric([lane], float(n))
        yield depth
        live = GaugeMetricFamily("xplain_workers_live", "Workers whose heartbeat is current.")
        live.add_metric([], float(self.snapshot.live_workers))
        yield live
        yield from worker_families(self.snapshot.metrics)


def worker_families(values: dict[str, float]) -> Iterator[Metric]:
    """Parse the workers' metrics hash (docs/PROTOCOL.md) into Prometheus families."""
    jobs = CounterMetricFamily(
        "xplain_jobs",
        "Jobs finished by workers, by method and final status.",
        labels=["method", "status"],
    )
    job_buckets: dict[str, dict[str, float]] = defaultdict(dict)
    job_sums: dict[str, float] = {}
    batch_buckets: dict[str, float] = {}
    batch_sum = 0.0
    for key, value in values.items():
        kind, _, rest = key.partition(":")
        if kind == "jobs_total" and rest.count(":") == 1:
            method, status = rest.split(":")
            jobs.add_metric([method, status], value)
        elif kind == "job_seconds_bucket" and ":" in rest:
            method, le = rest.rsplit(":", 1)
            job_buckets[method][le] = value
        elif kind == "job_seconds_sum" and rest:
            job_sums[rest] = value
        elif kind == "batch_size_bucket" and rest:
            batch_buckets[rest] = value
        elif key == "batch_size_sum":
            batch_sum = value
    yield jobs
    seconds = HistogramMetricFamily(
        "xplain_job_seconds", "Worker time per job, by method.", labels=["method"]
    )
    for method in sorted(job_buckets):
        seconds.add_metric(
            [method], _sorted_buckets(job_buckets[method]), sum_value=job_sums.get(method, 0.0)
        )
    yield seconds
    batch = HistogramMetricFamily(
        "xplain_batch_size", "Jobs computed together in one batched explainer call."
    )
    if batch_buckets:
        batch.add_metric([], _sorted_buckets(batch_buckets), sum_value=batch_sum)
    yield batch
    for key, name, text in FORWARD_COUNTERS:
        counter = CounterMetricFamily(name, text)
        counter.add_metric([], values.get(key, 0.0))
        yield counter


FORWARD_COUNTERS = (
    ("forward_passes_total", "xplain_forward_passes", "Gradient-free forward passes the "
     "workers' batchers ran (rows of any number of jobs each)."),
    ("forward_rows_total", "xplain_forward_rows", "Rows (images) in those passes."),
    ("forward_shared_passes_total", "xplain_forward_shared_passes",
     "Of those passes, the ones that carried rows of several jobs."),
)  # fmt: skip


def _sorted_buckets(buckets: dict[str, float]) -> list[tuple[str, float]]:
    """Cumulative buckets in ``le`` order, bounds written as Prometheus writes them (``1.0``),
    ending with ``+Inf`` (added from the largest if missing: the format requires one)."""
    finite = sorted(
        ((float(le), le, v) for le, v in buckets.items() if _is_number(le) and le != "+Inf"),
    )
    ordered = [(floatToGoString(bound), v) for bound, _, v in finite]
    inf = buckets.get("+Inf", ordered[-1][1] if ordered else 0.0)
    return [*ordered, ("+Inf", inf)]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class GatewayCollector:
    """This gateway's own counters that live outside the HTTP registry."""

    def __init__(self, replica_shortfalls: int) -> None:
        self.replica_shortfalls = replica_shortfalls

    def collect(self) -> Iterator[Metric]:
        """Yield the families (the interface ``generate_latest`` expects)."""
        shortfalls = CounterMetricFamily(
            "xplain_redis_replica_shortfalls",
            "Enqueues whose WAIT timed out before XPLAIN_REDIS_WAIT_REPLICAS replicas acked "
            "(those jobs could be lost in a failover).",
        )
        shortfalls.add_metric([], float(self.replica_shortfalls))
        yield shortfalls


def exposition(http: HttpMetrics, snapshot: Snapshot | None, replica_shortfalls: int = 0) -> bytes:
    """The Prometheus text exposition of everything above."""
    collectors: Iterable[object] = (
        http.registry,
        GatewayCollector(replica_shortfalls),
        SnapshotCollector(snapshot),
    )
    return b"".join(generate_latest(c) for c in collectors)  # type: ignore[arg-type]
