"""What clients see of a drill's failover, watched from this host, one thread per view.

Each watcher starts just before the trigger and stops at the first sign of a primary newer than
the old one (a node other than `old`, in a term above `old_term`), at the deadline, or when told
to; `result(t0)` gives its times in milliseconds from the trigger at `t0` (`clock.monotonic()`).
A watcher polls every few milliseconds, so a time is late by at most one poll (`POLL_S`) plus
one read.

- `ReadyWatch`: robot-command availability. A client that reads `/cluster/primary` (200 only
  on the primary with a valid lease whose takeover is done: the robot made safe, the journal
  settled), starting at the old primary and moving to the next member after a read that fails,
  as the client library does. Moving nothing: the robot is never commanded.
- `VipWatch`: a new TCP connection to the floating IP per read, and the same read, which names
  the node that answered.
- `MdnsWatch`: the endpoint `<cluster>._ha-voice._tcp.local.` as a listening client's cache
  holds it (a python-zeroconf browser runs for the whole drill) and as a fresh query answers
  (an RFC 6762 §6.7 one-shot query, answered by unicast, so no cache is involved).
"""

from __future__ import annotations

import secrets
import socket
import ssl
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx
from zeroconf import ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

# The package re-exports these only implicitly; their defining modules are typed.
from zeroconf._dns import DNSQuestion, DNSText
from zeroconf._protocol.incoming import DNSIncoming
from zeroconf._protocol.outgoing import DNSOutgoing

from ha_voice import clock
from ha_voice.cluster.discovery import ENDPOINT_SERVICE_TYPE, endpoint_name

__all__ = ["POLL_S", "EndpointCache", "MdnsWatch", "ReadyWatch", "Seen", "VipWatch", "Watch"]

POLL_S: Final = 0.01  # between two reads of one watcher: the resolution of its time
_READ_TIMEOUT_S: Final = 0.25  # one read; a live node answers a read in a few milliseconds
# A connect that is not answered at once went to where the address was (a floating IP's old
# owner drops the SYN): try again soon, as a client opening new connections does, rather than
# wait for the kernel's SYN retransmission (1 s) and report that instead of the failover.
_CONNECT_TIMEOUT_S: Final = 0.05
_TIMEOUT: Final = httpx.Timeout(_READ_TIMEOUT_S, connect=_CONNECT_TIMEOUT_S)
_QUERY_TIMEOUT_S: Final = 0.25
_QUERY_EVERY_S: Final = 0.02  # one multicast query per 20 ms for the few hundred ms of a failover
_MDNS_GROUP: Final = ("224.0.0.251", 5353)
_TYPE_TXT: Final = 16
_CLASS_IN: Final = 1

Verify = ssl.SSLContext | bool


@dataclass
class Seen:
    """What one watcher saw: when the new primary first showed (ms after the trigger; None if
    not before the deadline), which node and term, and how many reads it took and failed."""

    ms: float | None = None
    node: str | None = None
    term: int | None = None
    reads: int = 0
    failed: int = 0  # reads before `ms` that got no answer or not a serving node's
    gone_ms: float | None = None  # mDNS: when the old primary's record left the cache


class Watch(threading.Thread):
    """One view of the failover: `poll` until it finds a primary newer than (`old`,
    `old_term`), `deadline` (monotonic s) passes or `stop` is set."""

    def __init__(
        self, name: str, deadline: float, stop: threading.Event, old: tuple[str, int]
    ) -> None:
        super().__init__(name=f"drill-{name}", daemon=True)
        self.deadline, self.stop_event = deadline, stop
        self.old, self.old_term = old
        self.seen = Seen()
        self.found_at: float | None = None  # monotonic s
        self.gone_at: float | None = None

    def run(self) -> None:
        try:
            while not self.stop_event.is_set() and clock.monotonic() < self.deadline:
                if self.poll():
                    return
                self.stop_event.wait(POLL_S)
        finally:
            self.close()

    def poll(self) -> bool:
        """One read; True once the new primary is found (`seen` filled in)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the watcher opened."""

    def newer(self, node: object, term: object) -> bool:
        return isinstance(node, str) and node != self.old and _int(term) > self.old_term

    def found(self, node: str, term: int) -> bool:
        self.found_at = clock.monotonic()
        self.seen.node, self.seen.term = node, term
        return True

    def result(self, t0: float) -> Seen:
        """What this watcher saw, its times in ms after the trigger at `t0` (monotonic s)."""
        self.seen.ms = _ms_after(t0, self.found_at)
        self.seen.gone_ms = _ms_after(t0, self.gone_at)
        return self.seen


class ReadyWatch(Watch):
    """The first read of `/cluster/primary` that a new primary answers 200 (module docstring)."""

    def __init__(
        self,
        deadline: float,
        stop: threading.Event,
        old: tuple[str, int],
        urls: Sequence[str],
        verify: Verify,
    ) -> None:
        super().__init__("ready", deadline, stop, old)
        self._urls = list(urls)  # the old primary's first
        self._at = 0
        self._http = httpx.Client(verify=verify, timeout=_TIMEOUT)

    def poll(self) -> bool:
        self.seen.reads += 1
        body = _read(self._http, f"{self._urls[self._at]}/cluster/primary", want_200=True)
        if body is not None and self.newer(body.get("node"), body.get("term")):
            return self.found(str(body["node"]), _int(body["term"]))
        if body is None:  # no serving primary there: the client tries the next member
            self.seen.failed += 1
            self._at = (self._at + 1) % len(self._urls)
        return False

    def close(self) -> None:
        self._http.close()


class VipWatch(Watch):
    """The first answer through the floating IP from a newer primary (module docstring)."""

    def __init__(
        self,
        deadline: float,
        stop: threading.Event,
        old: tuple[str, int],
        url: str,
        verify: Verify,
    ) -> None:
        super().__init__("vip", deadline, stop, old)
        self._url = f"{url}/cluster/primary"
        no_reuse = httpx.Limits(max_keepalive_connections=0)  # a TCP connect per read
        self._http = httpx.Client(verify=verify, timeout=_TIMEOUT, limits=no_reuse)

    def poll(self) -> bool:
        self.seen.reads += 1
        body = _read(self._http, self._url, want_200=False)
        if body is not None and self.newer(body.get("node"), body.get("term")):
            return self.found(str(body["node"]), _int(body["term"]))
        if body is None or body.get("_status") != 200:
            self.seen.failed += 1
        return False

    def close(self) -> None:
        self._http.close()


class EndpointCache:
    """A python-zeroconf instance that browses `_ha-voice._tcp` for the whole drill, so that
    its cache holds the endpoint as any listening client's does."""

    def __init__(self, cluster: str) -> None:
        self.name = endpoint_name(cluster)
        self.zc = Zeroconf()
        self._browser = ServiceBrowser(self.zc, ENDPOINT_SERVICE_TYPE, handlers=[_ignore])

    def current(self) -> tuple[str, int] | None:
        """(node, term) of the endpoint record in the cache now, None if it holds none."""
        info = ServiceInfo(ENDPOINT_SERVICE_TYPE, self.name)
        if not info.load_from_cache(self.zc):
            return None
        txt = info.decoded_properties
        node, term = txt.get("node"), _int(txt.get("term"))
        return (node, term) if node else None

    def wait_for(self, node: str, timeout_s: float) -> bool:
        """Whether the cache shows `node`'s endpoint within `timeout_s` seconds, asking for it
        (as a resolving client does) while it does not."""
        deadline = clock.monotonic() + timeout_s
        while (left_s := deadline - clock.monotonic()) > 0:
            now = self.current()
            if now is not None and now[0] == node:
                return True
            info = ServiceInfo(ENDPOINT_SERVICE_TYPE, self.name)
            info.request(self.zc, min(left_s, 0.5) * 1000)
        return False

    def close(self) -> None:
        self._browser.cancel()
        self.zc.close()


class MdnsWatch(Watch):
    """The endpoint in a listening client's cache (`seen`) and in a fresh query's answer
    (`queried`), each the first time it names a newer primary (module docstring)."""

    def __init__(
        self, deadline: float, stop: threading.Event, old: tuple[str, int], cache: EndpointCache
    ) -> None:
        super().__init__("mdns", deadline, stop, old)
        self._cache = cache
        self.queried = Seen()
        self.queried_at: float | None = None
        self._next_query = 0.0
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        self._socket.bind(("0.0.0.0", 0))

    def poll(self) -> bool:
        if self.found_at is None:
            self._poll_cache()
        if self.queried_at is None and clock.monotonic() >= self._next_query:
            self._next_query = clock.monotonic() + _QUERY_EVERY_S
            self._poll_query()
        return self.found_at is not None and self.queried_at is not None

    def query_result(self, t0: float) -> Seen:
        """What the fresh queries saw, their time in ms after the trigger at `t0`."""
        self.queried.ms = _ms_after(t0, self.queried_at)
        return self.queried

    def _poll_cache(self) -> None:
        self.seen.reads += 1
        now = self._cache.current()
        if now is None and self.gone_at is None:
            self.gone_at = clock.monotonic()
        if now is not None and self.newer(*now):
            self.found(*now)
        elif now is None:
            self.seen.failed += 1

    def _poll_query(self) -> None:
        self.queried.reads += 1
        txt = query_txt(self._socket, self._cache.name, _QUERY_TIMEOUT_S)
        if txt is not None and self.newer(txt.get("node"), txt.get("term")):
            self.queried_at = clock.monotonic()
            self.queried.node, self.queried.term = txt["node"], _int(txt["term"])
        elif txt is None:
            self.queried.failed += 1

    def close(self) -> None:
        self._socket.close()


def query_txt(sock: socket.socket, name: str, timeout_s: float) -> dict[str, str] | None:
    """The TXT of `name` as the first mDNS responder answers a one-shot query (RFC 6762 §6.7:
    sent from a port other than 5353, answered by unicast with the query's id); None if no
    answer comes within `timeout_s` seconds."""
    query_id = secrets.randbits(16)
    out = DNSOutgoing(0, multicast=False, id_=query_id)  # multicast=True sends id 0
    out.add_question(DNSQuestion(name, _TYPE_TXT, _CLASS_IN))
    try:
        for packet in out.packets():
            sock.sendto(packet, _MDNS_GROUP)
    except OSError:
        return None
    deadline = clock.monotonic() + timeout_s
    while (left := deadline - clock.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(9000)
        except OSError:
            return None
        message = DNSIncoming(data)
        if not message.valid or message.id != query_id:
            continue
        for record in message.answers():
            if isinstance(record, DNSText) and record.name.lower() == name.lower():
                return _txt_pairs(record.text)
    return None


def _txt_pairs(text: bytes) -> dict[str, str]:
    """A TXT record's `key=value` strings (each behind its length byte) as a mapping."""
    pairs: dict[str, str] = {}
    at = 0
    while at < len(text):
        size = text[at]
        item = text[at + 1 : at + 1 + size].decode(errors="replace")
        at += 1 + size
        key, _, value = item.partition("=")
        pairs[key] = value
    return pairs


def _read(http: httpx.Client, url: str, *, want_200: bool) -> dict[str, Any] | None:
    """GET `url`'s JSON object (with its HTTP status as `_status`); None if it failed, is not a
    JSON object, or (with `want_200`) its status is not 200."""
    try:
        response = http.get(url)
        body = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    if not isinstance(body, dict) or (want_200 and response.status_code != 200):
        return None
    body["_status"] = response.status_code
    return body


def _ms_after(t0: float, at: float | None) -> float | None:
    return None if at is None else round((at - t0) * 1000, 1)


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return -1


def _ignore(**_: Mapping[str, Any] | ServiceStateChange | Zeroconf | str) -> None:
    """A browser's handler: the browser runs for its cache, not for its events."""
