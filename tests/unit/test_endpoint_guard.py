"""The primary's judgement of what others multicast about its endpoint (no sockets).

Which records make it re-announce (a goodbye for the shared PTR or its own records, another
responder's answer of a term not newer than its own), which do not (a newer primary's answer,
its own echo), and that consecutive re-announcements differ byte for byte (listeners drop a
packet identical to one of the last 800 ms).
"""

from __future__ import annotations

import pytest
from zeroconf._dns import DNSPointer, DNSRecord, DNSService, DNSText

from ha_voice.cluster.discovery import ENDPOINT_SERVICE_TYPE, Discovery, endpoint_name
from ha_voice.cluster.endpoint_records import (
    Contradiction,
    contradiction,
    reannouncement,
    txt_term,
)

NAME = endpoint_name("c1")
_IN, _PTR, _SRV, _TXT = 1, 12, 33, 16


def _discovery(term: int = 5) -> Discovery:
    discovery = Discovery(
        cluster="c1",
        node_id="b",
        address="10.0.0.2",
        cluster_port=7405,
        api_port=8888,
        priority=100,
        version="1",
    )
    discovery._addresses = ["10.0.0.2"]
    discovery._endpoint_infos = discovery._endpoint_service_infos(term)
    discovery._endpoint_term = term
    return discovery


def _judge(discovery: Discovery, records: list[DNSRecord]) -> Contradiction | None:
    """What the primary `discovery` makes of one response (as its zeroconf callback does)."""
    return contradiction(discovery._endpoint_infos, discovery._endpoint_term or 0, records)


def _txt(node: str, term: int, ttl: int = 15) -> DNSText:
    text = b"".join(bytes([len(e)]) + e for e in (f"node={node}".encode(), f"term={term}".encode()))
    return DNSText(NAME, _TXT, _IN | 0x8000, ttl, text)


def _srv(server: str, ttl: int = 15) -> DNSService:
    return DNSService(NAME, _SRV, _IN | 0x8000, ttl, 0, 0, 8888, server)


def _ptr(ttl: int) -> DNSPointer:
    return DNSPointer(ENDPOINT_SERVICE_TYPE, _PTR, _IN, ttl, NAME)


def test_the_term_is_read_from_txt_wire_data() -> None:
    assert txt_term(_txt("a", 7).text) == 7
    assert txt_term(b"\x06node=a") is None
    assert txt_term(b"\x09term=7x00") is None
    assert txt_term(b"\x20term=1") is None  # a length past the end: no crash


@pytest.mark.parametrize(
    ("records", "why", "lingers"),
    [
        ([_ptr(0)], "goodbye for the shared PTR", False),
        ([_srv("a.c1.ha-voice.local.")], "another responder's answer", True),
        ([_srv("a.c1.ha-voice.local."), _txt("a", 4)], "another responder's answer", True),
        ([_txt("a", 5)], "another responder's answer", True),
    ],
)
def test_a_contradiction_is_named(records: list[DNSRecord], why: str, lingers: bool) -> None:
    # A goodbye is gone from listeners' caches once we re-announce; another responder's live
    # record lingers beside ours until a flush more than a second younger than it.
    found = _judge(_discovery(), records)
    assert found is not None
    assert why in found.why
    assert found.lingers is lingers


def test_our_own_goodbye_is_a_contradiction_when_we_still_answer() -> None:
    discovery = _discovery()
    (info,) = discovery._endpoint_infos
    found = _judge(discovery, [info.dns_service(override_ttl=0)])
    assert found is not None
    assert "this node's" in found.why
    assert not found.lingers


@pytest.mark.parametrize(
    "records",
    [
        [_ptr(4500)],  # someone's positive PTR: the same as ours
        [_srv("a.c1.ha-voice.local."), _txt("a", 6)],  # a newer primary
        [_srv("a.c1.ha-voice.local.", ttl=0), _txt("a", 4, ttl=0)],  # an old one's goodbye
    ],
)
def test_no_contradiction(records: list[DNSRecord]) -> None:
    assert _judge(_discovery(), records) is None


def test_our_own_echo_is_no_contradiction() -> None:
    discovery = _discovery()
    (info,) = discovery._endpoint_infos
    echo = [info.dns_pointer(), info.dns_service(), info.dns_text()]
    assert _judge(discovery, echo) is None


def test_nothing_is_contradicted_once_withdrawn() -> None:
    discovery = _discovery()
    discovery._endpoint_infos, discovery._endpoint_term = (), None
    assert _judge(discovery, [_ptr(0)]) is None


def test_consecutive_reannouncements_differ_in_bytes() -> None:
    (info,) = _discovery()._endpoint_infos
    packets = [b"".join(reannouncement(info, n).packets()) for n in range(1, 9)]
    # Four fit in the 800 ms a listener remembers (one per 0.25 s): all distinct.
    for start in range(len(packets) - 3):
        assert len(set(packets[start : start + 4])) == 4
