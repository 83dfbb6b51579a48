"""The signature policy verdicts on /metrics, read from the image store's counts at scrape time."""

from __future__ import annotations

import httpx
from crishim.runtime import metrics


def test_verdict_counts_are_exposed_with_every_label() -> None:
    server = metrics.start_metrics_server("127.0.0.1:0")
    counts = {"verified": 2, "rejected": 1}
    metrics.set_pull_verdict_collector(lambda: counts)
    try:
        text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
        assert 'crishim_image_pull_verdicts_total{verdict="verified"} 2.0' in text
        assert 'crishim_image_pull_verdicts_total{verdict="rejected"} 1.0' in text
        assert 'crishim_image_pull_verdicts_total{verdict="unsigned"} 0.0' in text
        counts["unsigned"] = 5
        again = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
        assert 'crishim_image_pull_verdicts_total{verdict="unsigned"} 5.0' in again
    finally:
        metrics.set_pull_verdict_collector(None)
        server()
