from __future__ import annotations

import asyncio

import pytest
from crishim.images.retry import RetryPolicy


def test_delays_double_until_the_retries_are_used_up() -> None:
    policy = RetryPolicy(retries=3, backoff=0.5)
    assert [policy.delay(n) for n in range(1, 5)] == [0.5, 1.0, 2.0, None]


def test_no_retries_gives_up_after_the_first_failure() -> None:
    assert RetryPolicy(retries=0, backoff=1.0).delay(1) is None


def test_pause_sleeps_the_delay_then_reports_whether_to_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    policy = RetryPolicy(retries=2, backoff=0.1)

    async def run() -> list[bool]:
        return [await policy.pause(n) for n in (1, 2, 3)]

    assert asyncio.run(run()) == [True, True, False]
    assert slept == pytest.approx([0.1, 0.2])
