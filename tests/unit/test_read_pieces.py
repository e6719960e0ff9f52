"""The reads of the API: the journal's pages, and that no route or dependency runs on a
thread pool (where 40 threads contended for the interpreter lock with the election core)."""

from __future__ import annotations

import inspect
from collections import OrderedDict
from dataclasses import asdict

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from hypothesis import given
from hypothesis import strategies as st

from ha_voice.api import cluster, health, journal, robot
from ha_voice.journal import CommandRecord, Journal


def _journal(indices: list[int]) -> Journal:
    records = OrderedDict(
        (i, CommandRecord(i, 1, f"k{i}", "stand_up", {}, None, "", "", 0.0)) for i in indices
    )
    return Journal(records=records)


@given(
    st.lists(st.integers(1, 500), unique=True, max_size=80).map(sorted),
    st.integers(0, 520),
    st.integers(1, 30),
)
def test_a_page_is_the_records_after_since_whichever_end_it_is_read_from(
    indices: list[int], since: int, limit: int
) -> None:
    expected = [i for i in indices if i > since][:limit]
    assert [r.index for r in _journal(indices).tail(since, limit)] == expected


def test_a_record_as_json_is_every_field() -> None:
    record = CommandRecord(3, 2, "k", "move", {"vx": 0.5}, 1.5, "loop", "n@1", 9.0, "done")
    assert record.to_json() == {**asdict(record), "params": {"vx": 0.5}}


def _dependants(dependant: Dependant) -> list[Dependant]:
    return [dependant, *(d for sub in dependant.dependencies for d in _dependants(sub))]


def test_no_route_and_no_dependency_runs_on_a_thread_pool() -> None:
    """A plain `def` route or dependency runs on FastAPI's thread pool: 40 threads that contend
    for the interpreter lock with the election core's thread (a read flood cost a lease)."""
    routes = [
        route
        for router in (health.router, cluster.router, robot.router, journal.router)
        for route in router.routes
        if isinstance(route, APIRoute)
    ]
    assert len(routes) >= 12
    for route in routes:
        for dependant in _dependants(route.dependant):
            call = dependant.call
            if call is None:
                continue
            coroutine = inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(
                getattr(call, "__call__", None)  # noqa: B004 - a class instance (HTTPBearer)
            )
            assert coroutine, f"{route.path}: {getattr(call, '__name__', call)} is not async"
