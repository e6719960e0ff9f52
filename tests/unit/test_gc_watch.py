"""`Metrics.watch_gc`: every garbage collection of the daemon is timed, by generation, and timing
it can never wedge the thread that triggered it."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator

import pytest

from ha_voice.metrics import Metrics


@pytest.fixture
def watched() -> Iterator[Metrics]:
    metrics = Metrics("n1")
    callback: Callable[[str, dict[str, int]], None] = metrics.watch_gc()
    try:
        yield metrics
    finally:
        gc.callbacks.remove(callback)


def _count(metrics: Metrics, generation: int) -> float:
    value = metrics.registry.get_sample_value(
        "ha_voice_gc_pause_seconds_count", {"generation": str(generation)}
    )
    return value or 0.0


@pytest.mark.parametrize("generation", [0, 1, 2])
def test_each_collection_is_timed_under_its_generation(watched: Metrics, generation: int) -> None:
    before = [_count(watched, g) for g in range(3)]
    gc.collect(generation)
    after = [_count(watched, g) for g in range(3)]
    assert after[generation] >= before[generation] + 1
    total = watched.registry.get_sample_value(
        "ha_voice_gc_pause_seconds_sum", {"generation": str(generation)}
    )
    assert total is not None
    assert total > 0


def test_a_collection_inside_a_scrape_of_the_histogram_does_not_deadlock(
    watched: Metrics,
) -> None:
    """A scrape copies the histogram's children under its lock; that copy allocates, so a
    collection can start right there, in the same thread, and call the callback."""
    done = threading.Event()

    def scrape_that_collects() -> None:
        with watched.gc_pause._lock:  # where the scrape's allocation is
            gc.collect(0)
        done.set()

    thread = threading.Thread(target=scrape_that_collects, daemon=True)
    thread.start()
    thread.join(10.0)
    assert done.is_set(), "the GC callback waited for a lock its own thread held"
