"""The pure pieces behind the API's connections: admission by shares, the head's judgement,
throttled logs and asyncio's reports about connections."""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from ha_voice.api.admission import Admission, Refusal, Ticket
from ha_voice.api.log_throttle import LogThrottle
from ha_voice.api.loop_errors import ConnectionErrorHandler
from ha_voice.api.problems import Refusals
from ha_voice.api.request_head import SINGLE_HEADERS, head_bytes, judge_head

# --- admission ---------------------------------------------------------------------------------


def test_a_client_gets_its_share_and_no_more_while_others_get_theirs() -> None:
    admission = Admission(max_connections=10, per_client=3, member_connections=5)
    tickets = [admission.admit("10.0.0.2", member=False) for _ in range(3)]
    assert all(isinstance(t, Ticket) for t in tickets)
    refused = admission.admit("10.0.0.2", member=False)
    assert isinstance(refused, Refusal)
    assert refused.reason == "client_share"
    assert "api_max_connections_per_client" in refused.error
    assert isinstance(admission.admit("10.0.0.3", member=False), Ticket)
    ticket = tickets[0]
    assert isinstance(ticket, Ticket)
    admission.release(ticket)
    assert isinstance(admission.admit("10.0.0.2", member=False), Ticket)


def test_clients_together_cannot_pass_the_cap_and_never_take_the_members_pool() -> None:
    admission = Admission(max_connections=4, per_client=2, member_connections=3)
    for host in ("a", "a", "b", "b"):
        assert isinstance(admission.admit(host, member=False), Ticket)
    refused = admission.admit("c", member=False)
    assert isinstance(refused, Refusal)
    assert refused.reason == "connection_cap"
    assert "api_max_connections" in refused.error
    members = [admission.admit("n2", member=True) for _ in range(3)]
    assert all(isinstance(t, Ticket) and t.member for t in members)
    assert isinstance(admission.admit("n2", member=True), Refusal)
    assert (admission.clients, admission.members) == (4, 3)


def test_a_share_as_large_as_the_cap_names_the_cap() -> None:
    admission = Admission(max_connections=2, per_client=5, member_connections=1)
    admission.admit("a", member=False)
    admission.admit("a", member=False)
    refused = admission.admit("a", member=False)
    assert isinstance(refused, Refusal)
    assert refused.reason == "connection_cap"


@given(st.lists(st.tuples(st.sampled_from("abcm"), st.booleans()), max_size=60))
def test_every_admission_given_back_leaves_nothing_counted(steps: list[tuple[str, bool]]) -> None:
    admission = Admission(max_connections=5, per_client=2, member_connections=3)
    held: list[Ticket] = []
    for host, release in steps:
        if release and held:
            admission.release(held.pop(0))
            continue
        decision = admission.admit(host, member=host == "m")
        if isinstance(decision, Ticket):
            held.append(decision)
        assert admission.clients <= 5
        assert admission.members <= 3
        assert all(admission.held_by(h) <= 2 for h in "abc")
    for ticket in held:
        admission.release(ticket)
    assert (admission.clients, admission.members) == (0, 0)
    assert all(admission.held_by(h) == 0 for h in "abcm")


# --- the request head ---------------------------------------------------------------------------


def test_a_head_is_measured_as_it_was_sent() -> None:
    headers = [(b"host", b"x"), (b"accept", b"*/*")]
    sent = b"GET /health?a=1 HTTP/1.1\r\nhost: x\r\naccept: */*\r\n\r\n"
    assert head_bytes("GET", len(b"/health?a=1"), headers) == len(sent)


def test_a_head_over_the_limit_is_431_whatever_is_in_it() -> None:
    headers = [(b"x-big", b"a" * 20_000)]
    refused = judge_head("GET", 1, headers, 16_384)
    assert refused is not None
    assert (refused.status, refused.reason) == (431, "head_too_large")
    assert judge_head("GET", 1, [(b"x-big", b"a" * 16_000)], 16_384) is None


@pytest.mark.parametrize("name", sorted(SINGLE_HEADERS))
def test_a_header_that_must_be_single_is_refused_when_sent_twice(name: bytes) -> None:
    headers = [(b"host", b"x")] if name != b"host" else []
    headers += [(name.title(), b"one"), (name, b"two")]
    refused = judge_head("POST", 1, headers, 16_384)
    assert refused is not None
    assert (refused.status, refused.reason) == (400, "repeated_header")
    assert name.decode() in refused.error


def test_list_headers_may_repeat() -> None:
    headers = [(b"host", b"x"), (b"accept", b"a"), (b"accept", b"b"), (b"cookie", b"c")]
    assert judge_head("GET", 1, headers, 16_384) is None


# --- throttled logs ---------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_is_one_warning_per_kind_then_a_summary_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    throttle = LogThrottle(logging.getLogger("t.throttle"), "refusals", now=clock)
    with caplog.at_level(logging.INFO, logger="t.throttle"):
        for i in range(10_000):
            clock.now = i * 0.01  # 100 a second for 100 s
            throttle.note("a" if i % 2 else "b", "refused %d", i)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0].startswith("refused 0")
    assert warnings[1].startswith("refused 1")
    summaries = warnings[2:]
    assert len(summaries) == 1  # 100 s: one summary after the first minute, none more yet
    assert summaries[0].startswith("5999 more refusals in the last 60 s")


# --- asyncio's reports ------------------------------------------------------------------------


class _Loop:
    """What the handler calls on a loop: the default handler, recorded."""

    def __init__(self) -> None:
        self.passed_on: list[dict[str, Any]] = []

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.passed_on.append(context)


def test_accept_failures_are_refusals_and_callback_errors_are_counted_once_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    handler = ConnectionErrorHandler(registry, Refusals(registry))
    loop: Any = _Loop()
    emfile = OSError(errno.EMFILE, "Too many open files")
    with caplog.at_level(logging.WARNING):
        for _ in range(1000):
            handler.handle(
                loop, {"message": "socket.accept() out of system resource", "exception": emfile}
            )
            handler.handle(
                loop,
                {
                    "message": "Fatal error on transport",
                    "exception": ConnectionResetError(),
                    "protocol": asyncio.Protocol(),
                },
            )
    sample = registry.get_sample_value
    assert (
        sample("ha_voice_api_refusals_total", {"status": "444", "reason": "accept_emfile"}) == 1000
    )
    assert sample("ha_voice_api_connection_errors_total", {"kind": "ConnectionResetError"}) == 1000
    assert len(caplog.records) == 2  # one line of each kind; the rest counted
    assert loop.passed_on == []
    other = {"message": "Task exception was never retrieved", "exception": RuntimeError("x")}
    handler.handle(loop, other)
    assert loop.passed_on == [other]  # not about a connection: logged as asyncio would
