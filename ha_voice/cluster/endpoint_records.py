"""The endpoint's own mDNS records, as the primary sends them and judges what others send.

Pure functions over zeroconf's record types: no sockets, no event loop (`EndpointWatch` only
hands zeroconf's callback on). discovery.py decides when to send and what to do about it.

Invariants:
- A goodbye built here names only a service's own SRV and TXT, never the PTR every primary
  shares (RFC 6762 §10.1: a goodbye for a shared record deletes everyone's copy).
- `contradiction` never calls a newer primary's answer a contradiction: the node that sees one
  is the one to step down (the core does), not the one to shout louder.
- Consecutive `reannouncement`s differ byte for byte (listeners drop a packet identical to one
  of the last 800 ms: python-zeroconf's `_DUPLICATE_PACKET_SUPPRESSION_INTERVAL`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from zeroconf import RecordUpdate, RecordUpdateListener, Zeroconf
from zeroconf._dns import DNSPointer, DNSRecord, DNSService, DNSText  # not in __all__
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.asyncio import AsyncServiceInfo

__all__ = [
    "Contradiction",
    "EndpointWatch",
    "contradiction",
    "reannouncement",
    "txt_term",
    "unique_goodbye",
]

# A multicast DNS response: QR and AA set (RFC 6762 §18.2, §18.4).
_RESPONSE_FLAGS: Final = 0x8400


def txt_term(text: bytes) -> int | None:
    """The `term=` value in TXT wire data (RFC 6763 §6: length-prefixed strings), or None."""
    at = 0
    while at < len(text):
        length = text[at]
        if at + 1 + length > len(text):
            return None  # a string longer than the record: malformed
        entry = text[at + 1 : at + 1 + length]
        at += 1 + length
        key, _, value = entry.partition(b"=")
        if key.lower() == b"term" and value.isdigit() and len(value) <= 20:
            return int(value)
    return None


def unique_goodbye(info: AsyncServiceInfo) -> DNSOutgoing:
    """A response withdrawing `info`'s own SRV and TXT (TTL 0), and not its shared PTR."""
    out = DNSOutgoing(_RESPONSE_FLAGS)
    out.add_answer_at_time(info.dns_service(override_ttl=0), 0)
    out.add_answer_at_time(info.dns_text(override_ttl=0), 0)
    return out


def reannouncement(info: AsyncServiceInfo, number: int) -> DNSOutgoing:
    """The `number`th re-announcement of `info`: its PTR, SRV, TXT and (every other time) its
    addresses, in an order no announcement of the last second used.

    Listeners drop a packet byte-identical to one they received within 800 ms (python-zeroconf's
    duplicate suppression), and the announcement a re-announcement answers is often that
    recent; rotating the records (never by zero) changes the bytes, not the answer.
    """
    records: list[DNSRecord] = [info.dns_pointer(), info.dns_service(), info.dns_text()]
    if number % 2:
        records += info.get_address_and_nsec_records()
    turn = 1 + (number // 2) % (len(records) - 1)
    out = DNSOutgoing(_RESPONSE_FLAGS)
    for record in records[turn:] + records[:turn]:
        out.add_answer_at_time(record, 0)
    return out


class EndpointWatch(RecordUpdateListener):
    """Hands every record zeroconf receives to `check` (on zeroconf's loop); must not block."""

    def __init__(self, check: Callable[[list[RecordUpdate]], None]) -> None:
        self._check = check

    def async_update_records(self, zc: Zeroconf, now: float, records: list[RecordUpdate]) -> None:
        self._check(records)


@dataclass(frozen=True)
class Contradiction:
    """What a response said against our endpoint: `why`, for the log; `lingers` when it is
    another responder's live record, which stays in listeners' caches beside ours until a
    cache-flush record more than a second younger drops it (RFC 6762 §10.2)."""

    why: str
    lingers: bool


def contradiction(
    infos: Sequence[AsyncServiceInfo], term: int, records: list[DNSRecord]
) -> Contradiction | None:
    """What in `records` (one response) would leave listeners without the endpoint `infos` of
    `term` that this node answers for, or None."""
    ours = {info.key: info for info in infos}
    newer = any(
        isinstance(r, DNSText) and r.key in ours and (txt_term(r.text) or 0) > term for r in records
    )
    if newer:
        return None  # a newer primary speaks: not ours to contradict (the core steps down)
    for record in records:
        if isinstance(record, DNSPointer):
            if record.ttl == 0 and record.alias.lower() in ours:
                why = f"a goodbye for the shared PTR {record.name} -> {record.alias}"
                return Contradiction(why, lingers=False)
            continue
        info = ours.get(record.key)
        if info is None or not isinstance(record, DNSService | DNSText):
            continue
        mine = info.dns_service() if isinstance(record, DNSService) else info.dns_text()
        if record.ttl == 0 and record == mine:
            return Contradiction(f"a goodbye for this node's {record.name}", lingers=False)
        if record.ttl > 0 and record != mine:
            return Contradiction(f"another responder's answer for {record.name}", lingers=True)
    return None
