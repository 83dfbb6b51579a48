"""The daemon's own Prometheus metrics on `metrics.address` (issue 9, item 5).

prometheus_client (with http.server, wsgiref and ssl behind it) adds about
12 MB of RSS, a large share of the daemon's 40 MB idle target, so it is
imported only when the endpoint is enabled: until then every observe_*
function is a cheap no-op and importing this module costs nothing.

Exposed series:
  crishim_cri_requests_total{method,code}            counter
  crishim_cri_request_duration_seconds{method}       histogram
  crishim_image_pull_bytes_total                     counter
  crishim_image_pull_duration_seconds                histogram
  crishim_image_pulls_in_flight                      gauge
  crishim_image_pull_failures_total                  counter
  crishim_image_store_usage_bytes                    gauge
  crishim_image_pull_verdicts_total{verdict}         counter: verified, rejected, unsigned
                                                     (accepted with no signature required)
  crishim_<kind>{state} from set_state_collector(), e.g. crishim_containers{state="running"}
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

StateCollector = Callable[[], dict[str, dict[str, int]]]
VerdictCollector = Callable[[], dict[str, int]]
PULL_VERDICTS = ("verified", "rejected", "unsigned")

_CRI_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
_PULL_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

_lock = threading.Lock()
_metrics: _Metrics | None = None
_state_collector: StateCollector | None = None
_image_store_usage: int | None = None
_verdict_collector: VerdictCollector | None = None


class _Metrics:
    """The prometheus_client objects, created on first enable."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.cri_calls = Counter(
            "crishim_cri_requests",
            "CRI calls by method and gRPC status code.",
            ["method", "code"],
            registry=r,
        )
        self.cri_latency = Histogram(
            "crishim_cri_request_duration_seconds",
            "Latency of CRI calls by method.",
            ["method"],
            buckets=_CRI_BUCKETS,
            registry=r,
        )
        self.pull_bytes = Counter("crishim_image_pull_bytes", "Bytes downloaded by image pulls.", registry=r)
        self.pull_seconds = Histogram(
            "crishim_image_pull_duration_seconds",
            "Duration of image pulls, successful or not.",
            buckets=_PULL_BUCKETS,
            registry=r,
        )
        self.pulls_in_flight = Gauge("crishim_image_pulls_in_flight", "Image pulls in progress.", registry=r)
        self.pull_failures = Counter("crishim_image_pull_failures", "Image pulls that failed.", registry=r)
        r.register(_DaemonCollector())


class _DaemonCollector:
    """Gauges computed at scrape time: objects by state, image store usage."""

    def describe(self) -> list[Any]:
        # Nothing up front: collect() asks the daemon's callback only when scraped.
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        verdicts = _verdict_collector
        if verdicts is not None:
            counts = verdicts()
            by_verdict = CounterMetricFamily(
                "crishim_image_pull_verdicts", "Image pulls by signature policy verdict.", labels=["verdict"]
            )
            for verdict in PULL_VERDICTS:
                by_verdict.add_metric([verdict], counts.get(verdict, 0))
            yield by_verdict
        usage = _image_store_usage
        if usage is not None:
            yield GaugeMetricFamily(
                "crishim_image_store_usage_bytes", "Bytes used by the image store (blobs and layers).", usage
            )
        collector = _state_collector
        if collector is None:
            return
        try:
            by_kind = collector()
        except Exception:
            log.exception("state collector for metrics failed; scrape continues without it")
            return
        for kind, counts in sorted(by_kind.items()):
            family = GaugeMetricFamily(f"crishim_{kind}", f"Number of {kind} by state.", labels=["state"])
            for state, count in sorted(counts.items()):
                family.add_metric([state], count)
            yield family


def _enable() -> _Metrics:
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = _Metrics()
        return _metrics


def enabled() -> bool:
    return _metrics is not None


def observe_cri_call(method: str, code: str, seconds: float) -> None:
    """Count one CRI call (`code` is the gRPC status name, e.g. "OK", "NOT_FOUND")."""
    m = _metrics
    if m is None:
        return
    m.cri_calls.labels(method, code).inc()
    m.cri_latency.labels(method).observe(seconds)


def pull_started() -> None:
    m = _metrics
    if m is not None:
        m.pulls_in_flight.inc()


def pull_finished(bytes_: int, seconds: float, ok: bool) -> None:
    """Call once per pull_started(), whatever the outcome."""
    m = _metrics
    if m is None:
        return
    m.pulls_in_flight.dec()
    if bytes_ > 0:
        m.pull_bytes.inc(bytes_)
    m.pull_seconds.observe(seconds)
    if not ok:
        m.pull_failures.inc()


def set_state_collector(fn: StateCollector | None) -> None:
    """fn() -> {"containers": {"running": 2, "exited": 1}, "sandboxes": {"ready": 1}} at each scrape.

    It runs in the metrics server's thread: it must only read (e.g. counts
    kept in memory), never await or take asyncio locks.
    """
    global _state_collector
    _state_collector = fn


def set_pull_verdict_collector(fn: VerdictCollector | None) -> None:
    """fn() -> {"verified": 3, "rejected": 1, "unsigned": 7}, counts since start, at each scrape."""
    global _verdict_collector
    _verdict_collector = fn


def set_image_store_usage(bytes_: int | None) -> None:
    """Record the image store's size; the daemon updates it after pulls and removals."""
    global _image_store_usage
    _image_store_usage = bytes_


def parse_address(address: str) -> tuple[str, int]:
    """ "127.0.0.1:9090", "[::1]:9090", ":9090" (all interfaces), "localhost:0" (any free port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics address {address!r} must be HOST:PORT, e.g. 127.0.0.1:9090")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class MetricsServer:
    """A running endpoint; call it (or stop()) to shut it down. `port` is the bound port."""

    def __init__(self, server: Any, thread: threading.Thread | None) -> None:
        self._server = server
        self._thread = thread
        self.host: str = server.server_address[0] if server is not None else ""
        self.port: int = server.server_address[1] if server is not None else 0

    def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __call__(self) -> None:
        self.stop()


def start_metrics_server(address: str) -> MetricsServer:
    """Serve /metrics on `address` from a daemon thread; "" disables (returns a no-op stopper)."""
    if not address:
        return MetricsServer(None, None)
    host, port = parse_address(address)
    metrics = _enable()
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    log.info("metrics endpoint on http://%s:%d/metrics", host, server.server_address[1])
    return MetricsServer(server, thread)
