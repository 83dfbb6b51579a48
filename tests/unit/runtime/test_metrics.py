from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest
from crishim.runtime import metrics


def _value(text: str, series: str) -> float:
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert m, f"{series} missing from scrape"
    return float(m.group(1))


@pytest.fixture
def server() -> Iterator[metrics.MetricsServer]:
    srv = metrics.start_metrics_server("127.0.0.1:0")
    yield srv
    srv()
    metrics.set_state_collector(None)
    metrics.set_image_store_usage(None)


def _scrape(srv: metrics.MetricsServer) -> str:
    r = httpx.get(f"http://127.0.0.1:{srv.port}/metrics", timeout=5)
    assert r.status_code == 200
    return r.text


def test_endpoint_counts_cri_calls_by_method_and_code(server: metrics.MetricsServer) -> None:
    method = f"RunPodSandbox{uuid.uuid4().hex[:6]}"
    metrics.observe_cri_call(method, "OK", 0.02)
    metrics.observe_cri_call(method, "OK", 0.3)
    metrics.observe_cri_call(method, "NOT_FOUND", 0.001)
    text = _scrape(server)
    assert _value(text, f'crishim_cri_requests_total{{code="OK",method="{method}"}}') == 2
    assert _value(text, f'crishim_cri_requests_total{{code="NOT_FOUND",method="{method}"}}') == 1
    assert _value(text, f'crishim_cri_request_duration_seconds_count{{method="{method}"}}') == 3
    assert _value(text, f'crishim_cri_request_duration_seconds_bucket{{le="0.025",method="{method}"}}') == 2


def test_pulls_report_bytes_duration_in_flight_and_failures(server: metrics.MetricsServer) -> None:
    before = _scrape(server)
    metrics.pull_started()
    metrics.pull_started()
    during = _scrape(server)
    assert _value(during, "crishim_image_pulls_in_flight") == _value(before, "crishim_image_pulls_in_flight") + 2
    metrics.pull_finished(1000, 1.5, ok=True)
    metrics.pull_finished(0, 0.2, ok=False)
    after = _scrape(server)
    assert _value(after, "crishim_image_pulls_in_flight") == _value(before, "crishim_image_pulls_in_flight")
    assert _value(after, "crishim_image_pull_bytes_total") == _value(before, "crishim_image_pull_bytes_total") + 1000
    assert _value(after, "crishim_image_pull_failures_total") == _value(before, "crishim_image_pull_failures_total") + 1
    assert (
        _value(after, "crishim_image_pull_duration_seconds_count")
        == _value(before, "crishim_image_pull_duration_seconds_count") + 2
    )


def test_state_collector_and_image_store_usage_are_read_at_scrape(server: metrics.MetricsServer) -> None:
    counts = {"containers": {"running": 2, "exited": 1}, "sandboxes": {"ready": 1}}
    metrics.set_state_collector(lambda: counts)
    metrics.set_image_store_usage(123456)
    text = _scrape(server)
    assert _value(text, 'crishim_containers{state="running"}') == 2
    assert _value(text, 'crishim_containers{state="exited"}') == 1
    assert _value(text, 'crishim_sandboxes{state="ready"}') == 1
    assert _value(text, "crishim_image_store_usage_bytes") == 123456
    counts["containers"]["running"] = 5
    assert _value(_scrape(server), 'crishim_containers{state="running"}') == 5


def test_failing_state_collector_does_not_break_the_scrape(
    server: metrics.MetricsServer, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> dict[str, dict[str, int]]:
        raise RuntimeError("store closed")

    metrics.set_state_collector(broken)
    text = _scrape(server)
    assert "crishim_cri_requests" in text
    assert "state collector for metrics failed" in caplog.text


def test_stopped_server_refuses_connections() -> None:
    srv = metrics.start_metrics_server("127.0.0.1:0")
    port = srv.port
    srv()
    srv()  # stopping twice is harmless
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_empty_address_disables_the_endpoint() -> None:
    stop = metrics.start_metrics_server("")
    assert stop.port == 0
    stop()


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1:9090", ("127.0.0.1", 9090)), ("[::1]:0", ("::1", 0)), (":9090", ("0.0.0.0", 9090))],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert metrics.parse_address(address) == expected


def test_bad_address_is_refused_with_an_example() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        metrics.parse_address("localhost")


def test_import_does_not_load_prometheus_client_until_enabled() -> None:
    code = (
        "import sys\n"
        "from crishim.runtime import metrics\n"
        "metrics.observe_cri_call('Version', 'OK', 0.1)\n"
        "metrics.pull_started(); metrics.pull_finished(1, 1.0, True)\n"
        "assert 'prometheus_client' not in sys.modules, 'imported eagerly'\n"
        "stop = metrics.start_metrics_server('127.0.0.1:0')\n"
        "assert 'prometheus_client' in sys.modules\n"
        "stop()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
