"""Goodbyes that lie: an old primary's withdrawal must not remove the new primary's endpoint.

The endpoint's PTR is a shared record (the same bytes from every primary), so a goodbye for it
from an old primary (paused, partitioned, or simply slower to step down than its successor is
to take over) deleted the new primary's copy from every listener's cache (RFC 6762 §10.1), and
browsers reported the endpoint removed. A passive python-zeroconf browser in a third namespace
(tests/client_view.py) watches; real multicast on a bridge between namespaces.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

from ha_voice.cluster.discovery import ENDPOINT_SERVICE_TYPE, endpoint_name
from tests.client_view import MdnsView
from tests.integration.netns import Lan, created
from tests.integration.test_discovery import (
    CLUSTER,
    ROOT,
    SEEN_WITHIN_S,
    _command,
    _event,
    _start,
)

NAME = endpoint_name(CLUSTER)
CLIENT = 2

# A responder of the endpoint that withdraws the way zeroconf (and ha-voice before this fix)
# does: unregister, so goodbyes for the PTR, SRV and TXT. Prints "registered" once its three
# announcements are out, waits for a line, withdraws, prints "withdrawn", waits for a line,
# exits.
STOCK_RESPONDER = r"""
import asyncio, sys
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

async def main(address, name):
    aiozc = AsyncZeroconf(interfaces=[address])
    info = AsyncServiceInfo(
        "_ha-voice._tcp.local.", name, port=8899, properties={"node": "old", "term": "1"},
        server="old.t1.ha-voice.local.", parsed_addresses=[address], host_ttl=15, other_ttl=15,
    )
    await (await aiozc.async_register_service(info, cooperating_responders=True))
    print("registered", flush=True)
    read = asyncio.get_running_loop().run_in_executor
    await read(None, sys.stdin.readline)
    await (await aiozc.async_unregister_service(info))
    print("withdrawn", flush=True)
    await read(None, sys.stdin.readline)
    await aiozc.async_close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.fixture
def lan() -> Iterator[Lan]:
    with created(Lan(3, prefix="hvg")) as network:
        yield network


@pytest.fixture
def view(lan: Lan) -> Iterator[MdnsView]:
    watcher = MdnsView.start(lan[CLIENT], [ENDPOINT_SERVICE_TYPE])
    try:
        yield watcher
    finally:
        watcher.close()


def test_an_old_primarys_withdrawal_leaves_the_new_endpoint_alone(lan: Lan, view: MdnsView) -> None:
    a, b = _start(lan, 0, "a-id"), _start(lan, 1, "b-id")
    a.wait_for(_event("started"), SEEN_WITHIN_S)
    b.wait_for(_event("started"), SEEN_WITHIN_S)
    _command(a, "publish 3", "published", term=3)
    view.wait_for(NAME, lambda e: e.node == "a-id", 5.0)
    # b takes over while a still answers (a paused primary, resumed): then a withdraws.
    _command(b, "publish 4", "published", term=4)
    view.wait_for(NAME, lambda e: e.node == "b-id" and e.term == 4, 5.0)
    since = time.monotonic()
    _command(a, "withdraw", "withdrawn")
    time.sleep(1.5)  # a's goodbyes take 250 ms; a flushed cache entry goes within 1 s
    assert view.removals(NAME, since) == []
    current = view.current(NAME)
    assert current is not None
    assert (current.node, current.address, current.port) == ("b-id", lan.address(1), 8801)


def test_the_primary_answers_a_goodbye_for_its_endpoint_at_once(lan: Lan, view: MdnsView) -> None:
    # A responder that says goodbye for the shared PTR (another implementation, an older
    # ha-voice): the primary re-announces, and the browser holds the endpoint again.
    b = _start(lan, 1, "b-id")
    b.wait_for(_event("started"), SEEN_WITHIN_S)
    stock = lan[0].spawn([sys.executable, "-c", STOCK_RESPONDER, lan.address(0), NAME], cwd=ROOT)
    stock.wait_for(lambda line: line == "registered", 10.0)
    _command(b, "publish 4", "published", term=4)
    view.wait_for(NAME, lambda e: e.node == "b-id", 5.0)
    since = time.monotonic()
    stock.send("withdraw")
    stock.wait_for(lambda line: line == "withdrawn", 5.0)
    time.sleep(1.5)
    history = view.history(NAME, since)
    removals = [e.at for e in history if e.change == "removed"]
    if removals:  # the goodbye may win for a moment; the endpoint must be back at once
        back = [e.at for e in history if e.change == "added" and e.at > removals[-1]]
        assert back, history
        assert back[0] - removals[-1] < 0.5, history
    current = view.current(NAME)
    assert current is not None, history
    assert (current.node, current.address) == ("b-id", lan.address(1)), history
    stock.send("quit")


def test_another_responders_late_answer_is_flushed_from_clients_caches(
    lan: Lan, view: MdnsView
) -> None:
    # Another responder announces the endpoint just after the primary did (an old primary's
    # answers queued while it was paused): the client's cache holds both, within a second of
    # each other, so the primary's cache-flush bit spares the other (RFC 6762 §10.2) and which
    # one the client resolves is its choice. The primary re-announces once more a second on,
    # and the other's record leaves the client's cache.
    b = _start(lan, 1, "b-id")
    b.wait_for(_event("started"), SEEN_WITHIN_S)
    _command(b, "publish 4", "published", term=4)
    view.wait_for(NAME, lambda e: e.node == "b-id", 5.0)
    stock = lan[0].spawn([sys.executable, "-c", STOCK_RESPONDER, lan.address(0), NAME], cwd=ROOT)
    stock.wait_for(lambda line: line == "registered", 10.0)
    deadline = time.monotonic() + 6.0
    cached = view.cached_nodes(NAME)
    while cached != ["b-id"] and time.monotonic() < deadline:
        time.sleep(0.1)
        cached = view.cached_nodes(NAME)
    assert cached == ["b-id"], f"the client's cache still holds {cached}"
    stock.send("quit")
