"""Event-loop lag: measured on a real loop in a thread, exported, and a stall named in the log.

A callback that keeps its loop busy is the stall a heartbeat would wait behind; the probe must
see it in the histogram and the recent-worst gauge, and the watch thread must catch the loop's
thread inside that callback so that the warning says where the time went.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from ha_voice import clock
from ha_voice.loop_lag import LagProbe, StallWatch
from ha_voice.metrics import Metrics

BLOCK_S = 0.3


def _busy_in_a_callback(seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


class _Loop:
    """An event loop on a thread of its own, running one probe, with a watch beside it."""

    def __init__(self, metrics: Metrics, warn_s: float | None) -> None:
        self.probe = LagProbe("core", metrics, interval_s=0.02, warn_s=warn_s, why="test")
        self.watch = StallWatch([self.probe])
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="test-loop", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(self.probe.async_run())
        self.loop.run_forever()
        self.task.cancel()
        self.loop.run_until_complete(asyncio.gather(self.task, return_exceptions=True))
        self.loop.close()

    def __enter__(self) -> _Loop:
        self.thread.start()
        self.watch.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.watch.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics("t")


@pytest.fixture
def running(metrics: Metrics) -> Iterator[_Loop]:
    with _Loop(metrics, warn_s=0.1) as loop:
        time.sleep(0.2)  # a few wakes first: the probe knows its thread
        yield loop


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _wait_for(condition: object, timeout_s: float = 5.0) -> None:
    deadline = clock.monotonic() + timeout_s
    while clock.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_a_blocked_loop_is_measured_exported_and_the_culprit_named(
    running: _Loop, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ha_voice.loop_lag")
    late_before = _sample(metrics, "ha_voice_event_loop_lag_seconds_bucket", loop="core", le="0.25")
    count_before = _sample(metrics, "ha_voice_event_loop_lag_seconds_count", loop="core")
    running.loop.call_soon_threadsafe(_busy_in_a_callback, BLOCK_S)

    def warned() -> bool:
        return any("core loop ran" in r.getMessage() for r in caplog.records)

    _wait_for(warned)
    (record,) = [r for r in caplog.records if "core loop ran" in r.getMessage()]
    message = record.getMessage()
    lag_ms = float(message.split("ran ", 1)[1].split(" ms", 1)[0])
    assert lag_ms >= 0.8 * BLOCK_S * 1000, message
    assert "over 100 ms (test)" in message
    assert "core loop's thread in _busy_in_a_callback (test_loop_lag.py:" in message, message
    # Exported: one wake at least past 0.25 s, and the recent worst.
    count = _sample(metrics, "ha_voice_event_loop_lag_seconds_count", loop="core")
    within = _sample(metrics, "ha_voice_event_loop_lag_seconds_bucket", loop="core", le="0.25")
    assert count - count_before > within - late_before
    assert _sample(metrics, "ha_voice_event_loop_lag_max_seconds", loop="core") >= 0.8 * BLOCK_S


def test_warnings_are_throttled_and_count_the_rest(
    running: _Loop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ha_voice.loop_lag")
    for _ in range(3):
        running.loop.call_soon_threadsafe(_busy_in_a_callback, 0.15)
        time.sleep(0.4)
    _wait_for(lambda: running.probe._unwarned == 2)
    assert len([r for r in caplog.records if "core loop ran" in r.getMessage()]) == 1


def test_every_wake_is_observed_and_the_gauge_is_the_recent_worst(
    running: _Loop, metrics: Metrics
) -> None:
    before = _sample(metrics, "ha_voice_event_loop_lag_seconds_count", loop="core")
    time.sleep(0.5)
    assert _sample(metrics, "ha_voice_event_loop_lag_seconds_count", loop="core") > before + 5
    gauge = _sample(metrics, "ha_voice_event_loop_lag_max_seconds", loop="core")
    assert gauge == pytest.approx(running.probe.worst_recent(clock.monotonic(), 10.0), abs=0.05)
