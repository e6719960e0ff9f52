"""What the chaos checker judges besides journals: each node's role and term over time, and what
a client on the LAN is shown (the mDNS endpoint, the floating IP's ARP owner).

Both record plain samples (`RoleSample`, `ViewSample`) on threads; the checker needs nothing else,
so a different observer (e.g. a shared client-view module) can feed it the same samples.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

import httpx
from zeroconf import (
    ServiceBrowser,
    ServiceStateChange,
    Zeroconf,
    current_time_millis,
)
from zeroconf.const import _CLASS_IN, _TYPE_TXT

from ha_voice.cluster.discovery import ENDPOINT_SERVICE_TYPE, endpoint_name

__all__ = ["ArpProbe", "ClientView", "Monitor", "RoleSample", "ViewSample"]


@dataclass(frozen=True)
class RoleSample:
    """One poll of a node's /cluster/primary at `t_s` (monotonic): serving (200), role, term;
    `term` None when the node did not answer."""

    t_s: float
    node: str
    serving: bool
    role: str | None
    term: int | None


@dataclass(frozen=True)
class ViewSample:
    """What a client saw at `t_s`: `channel` "mdns" (the endpoint's TXT node, None when the
    browser holds no record) or "arp" (the nodes whose MAC answered for the floating IP)."""

    t_s: float
    channel: str
    nodes: tuple[str, ...]
    note: str = ""  # "removed" (the browser saw it go), "uncached", "txt expired" (see below)


class Monitor:
    """One thread per node polling GET /cluster/primary every `period_s`."""

    def __init__(self, urls: Mapping[str, str], period_s: float = 0.1) -> None:
        self.samples: list[RoleSample] = []
        self._urls = dict(urls)
        self._period_s = period_s
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._poll, args=(n, u), name=f"chaos-monitor-{n}", daemon=True)
            for n, u in self._urls.items()
        ]

    def __enter__(self) -> Monitor:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5.0)

    def _poll(self, node: str, url: str) -> None:
        with httpx.Client(timeout=0.3) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                self.samples.append(_role_sample(client, node, url + "/cluster/primary"))
                self._stop.wait(max(0.0, self._period_s - (time.monotonic() - started)))


def _role_sample(client: httpx.Client, node: str, url: str) -> RoleSample:
    try:
        response = client.get(url)
        body = response.json()
        return RoleSample(
            time.monotonic(), node, response.status_code == 200, body["role"], int(body["term"])
        )
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return RoleSample(time.monotonic(), node, False, None, None)


class ArpProbe:
    """Who answers ARP for `address` on `interface`: a who-has broadcast, every reply's MAC."""

    def __init__(self, interface: str, own_address: str, address: str) -> None:
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
        self._sock.bind((interface, 0))
        own_mac = self._sock.getsockname()[4]
        self._target = socket.inet_aton(address)
        arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)  # Ethernet, IPv4, request
        arp += own_mac + socket.inet_aton(own_address) + b"\0" * 6 + self._target
        self._request = b"\xff" * 6 + own_mac + b"\x08\x06" + arp

    def owners(self, wait_s: float) -> set[str]:
        """Send one request; the MACs (aa:bb:...) that replied within `wait_s`."""
        self._sock.settimeout(None)
        self._sock.send(self._request)
        found: set[str] = set()
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            self._sock.settimeout(left)
            try:
                frame = self._sock.recv(128)
            except TimeoutError:
                break
            # A reply (op 2) whose sender protocol address is the one asked about.
            if len(frame) >= 42 and frame[20:22] == b"\0\2" and frame[28:32] == self._target:
                found.add(frame[22:28].hex(":"))
        return found

    def close(self) -> None:
        self._sock.close()


class ClientView:
    """A passive mDNS browser for the endpoint and an ARP probe of the floating IP, sampled every
    `period_s` into `samples`; `macs` maps each member's MAC to its node id."""

    def __init__(
        self,
        cluster: str,
        macs: Mapping[str, str],
        arp: ArpProbe | None,
        period_s: float = 0.1,
    ) -> None:
        self.samples: list[ViewSample] = []
        self.events: list[tuple[float, str]] = []  # (t_s, "Added"/"Updated"/"Removed")
        self._name = endpoint_name(cluster)
        self._macs = dict(macs)
        self._arp = arp
        self._period_s = period_s
        self._present = False
        self._last_node: str | None = None  # the last endpoint TXT's node, while the PTR stands
        self._stop = threading.Event()
        self._zc: Zeroconf | None = None
        self._browser: ServiceBrowser | None = None
        self._thread = threading.Thread(target=self._sample, name="chaos-view", daemon=True)

    def __enter__(self) -> ClientView:
        self._zc = Zeroconf()
        self._browser = ServiceBrowser(self._zc, ENDPOINT_SERVICE_TYPE, handlers=[self._on_change])
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5.0)
        if self._browser is not None:
            self._browser.cancel()
        if self._zc is not None:
            self._zc.close()
        if self._arp is not None:
            self._arp.close()

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if name != self._name:
            return
        self.events.append((time.monotonic(), state_change.name))
        self._present = state_change is not ServiceStateChange.Removed

    def _sample(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.samples.append(ViewSample(started, "mdns", *self._mdns_node()))
            if self._arp is not None:
                owners = self._arp.owners(wait_s=self._period_s / 2)
                nodes = tuple(sorted(self._macs.get(mac, mac) for mac in owners))
                self.samples.append(ViewSample(started, "arp", nodes))
            self._stop.wait(max(0.0, self._period_s - (time.monotonic() - started)))

    def _mdns_node(self) -> tuple[tuple[str, ...], str]:
        """The node the browser's endpoint points at, or () and why not ("removed": the browser
        reported it gone). While the PTR stands, the node of the last TXT seen for it counts even
        once that TXT expired (noted "txt expired"): a ServiceBrowser refreshes only the PTR, and
        a client resolving it would be answered for the same name."""
        if not self._present or self._zc is None:
            self._last_node = None
            return (), "removed"
        now = current_time_millis()
        texts = [
            r
            for r in self._zc.cache.get_all_by_details(self._name, _TYPE_TXT, _CLASS_IN)
            if not r.is_expired(now)
        ]
        if texts:
            # The longest-lived: a cache-flush announcement leaves the records it replaces one
            # second to live (RFC 6762 10.2), renewing their `created`.
            freshest = max(texts, key=lambda r: r.get_remaining_ttl(now))
            self._last_node = _txt_value(getattr(freshest, "text", b""), b"node")
        elif self._last_node is not None:
            return (self._last_node,), "txt expired"
        if self._last_node is None:
            return (), "uncached"
        return (self._last_node,), ""


def _txt_value(text: bytes, key: bytes) -> str | None:
    """The value of `key` in a TXT record's rdata (length-prefixed key=value strings)."""
    i = 0
    while i < len(text):
        length = text[i]
        item = text[i + 1 : i + 1 + length]
        i += 1 + length
        name, _, value = item.partition(b"=")
        if name == key:
            return value.decode(errors="replace")
    return None


def primary_timeline(
    samples: Sequence[RoleSample], stale_s: float = 0.5
) -> list[tuple[float, str]]:
    """(t_s, node) each time the one serving primary changed; node "" while there is none or
    more than one. A node's last sample counts for `stale_s`."""
    latest: dict[str, RoleSample] = {}
    timeline: list[tuple[float, str]] = []
    for sample in sorted(samples, key=lambda s: s.t_s):
        latest[sample.node] = sample
        serving = [n for n, s in latest.items() if s.serving and sample.t_s - s.t_s <= stale_s]
        current = serving[0] if len(serving) == 1 else ""
        if not timeline or timeline[-1][1] != current:
            timeline.append((sample.t_s, current))
    return timeline
