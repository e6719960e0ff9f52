"""mDNS discovery of the cluster's nodes, and the virtual endpoint that follows the primary.

Every node registers `<node_id>@<cluster>._ha-voice-node._udp.local.` (port: the cluster's UDP
port) and browses that type for its peers: node ids need only be unique within their cluster,
so two robots' clusters of jetson-1, jetson-2 share a LAN. Neither `@` nor `.` can appear in a
node id or a cluster name, so the instance names one (node, cluster) pair. Only the primary
registers the endpoint `<cluster>._ha-voice._tcp.local.` (port: the HTTP API) and, where the
node serves Wyoming, `<cluster>._wyoming._tcp.local.` (port: `wyoming_port`; Home Assistant
keys its entry by that name, so one name follows the primary). Both run on python-zeroconf's
asyncio API, on the caller's event loop.

TXT keys (RFC 6763 §6), all plain text and public, never a secret:

    node service  cluster, node, priority, api_port, version (required); caps (optional,
                  comma-separated)
    endpoint      cluster, node, term, version (required); scheme (optional: https when the API
                  speaks TLS, absent for http); the Wyoming endpoint carries the same

Invariants:
- Another cluster's node records are never resolved (their instance names another cluster).
- `on_peer` is called only for a well-formed record of this cluster that is not this node,
  and only when that peer's record is new or changed; `on_peer_gone` only for a node that
  `on_peer` reported. Both run as their own event-loop callbacks, so a bug in one is reported
  by the loop and never unwinds zeroconf or a resolution.
- A malformed record (a missing key, a non-integer port or priority, no IPv4 address, an
  instance label that is not the TXT node) is dropped and counted in `malformed`, logged once
  at warning and then at debug; nothing from the network raises into zeroconf's callback.
- The browser callback never blocks: it starts one resolution task per service name (a newer
  event replaces the older task), keeps a reference, and `async_close` cancels what is left.
- Goodbyes are sent only for names this node registered successfully: a node whose id is
  taken on the network never speaks for the node that owns it.
- Once a service is withdrawn or changed, nothing about its old records leaves this node:
  the announcements still in flight are cancelled and queued answers dropped (`_silence`),
  since a late one would undo the goodbye or the new term in listeners' caches for a TTL.

The endpoint (both of its services) moves from node to node, so it is registered with
`cooperating_responders=True` (no probe, RFC 6762 §8.1) and `allow_name_change=False`. A
probe would find a dead primary's records still in caches and refuse the name, or rename it to
one no client looks for. Two facts make the move safe and quick instead:
- every announcement sets the cache-flush bit on SRV, TXT and A (RFC 6762 §10.2), so a
  listener drops the old primary's answer the moment the new primary announces;
- the endpoint's records live `ENDPOINT_TTL_S`, so a listener that missed the new primary's
  announcements, or holds the answer of a primary that was SIGKILLed without a goodbye, stops
  trusting it within that time.
The endpoint's PTR (`_ha-voice._tcp.local. → <cluster>._ha-voice._tcp.local.`) is a shared
record, the same bytes from every primary, so a goodbye for it (TTL 0, RFC 6762 §10.1) from an
old primary would delete the new primary's copy from every listener's cache: browsers would
report the endpoint removed. Hence:
- an old primary never says goodbye for the shared PTR; it stops answering at once
  (`retract_endpoint`, the moment it stops leading, before an answer queued while it was
  paused can leave) and says goodbye only for its own SRV and TXT, whose data name it and so
  can never delete another node's records; the PTR lives out its TTL in listeners' caches;
- the primary watches what others send about its endpoint: a goodbye for the PTR or for its
  own records, or another node's SRV or TXT of a term not newer than its own (an old primary
  that answered from its cache before it knew), is answered by re-announcing at once, at most
  every `REANNOUNCE_GAP_S`, so listeners hold the right answer again within milliseconds;
- another responder's live answer (not a goodbye) stays in a listener's cache beside ours: a
  cache-flush record drops only records received more than a second before it (RFC 6762
  §10.2), and which of two the listener resolves to is its own choice. So one more
  re-announcement follows `FLUSH_AFTER_S` after such an answer, and flushes it.
The host name `<node_id>.<cluster>.ha-voice.local.` is this node's own, the same for both
services: it can never clash with the machine's own `<hostname>.local.` that avahi publishes,
nor with a node of the same id in another cluster, and the endpoint's goodbye leaves the node's
address record alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from zeroconf import (
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    RecordUpdate,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from ha_voice.cluster.endpoint_records import (
    EndpointWatch,
    contradiction,
    reannouncement,
    unique_goodbye,
)
from ha_voice.errors import ConfigError, LocalError, RemoteError
from ha_voice.interfaces import WILDCARD, advertised_ipv4, host_networks

__all__ = [
    "ENDPOINT_SERVICE_TYPE",
    "ENDPOINT_TTL_S",
    "NODE_SERVICE_TYPE",
    "NODE_TTL_S",
    "WYOMING_SERVICE_TYPE",
    "Discovery",
    "PeerRecord",
    "async_resolve_endpoint",
    "endpoint_name",
    "node_instance",
    "peer_from_txt",
    "reachable_address",
]

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")

NODE_SERVICE_TYPE: Final = "_ha-voice-node._udp.local."
ENDPOINT_SERVICE_TYPE: Final = "_ha-voice._tcp.local."
WYOMING_SERVICE_TYPE: Final = "_wyoming._tcp.local."  # what Home Assistant browses for
# RFC 6762 §10 gives 120 s to records that name a host (SRV, A); PTR and TXT get the same
# rather than 75 minutes, so a node that died without a goodbye leaves its peers' views within
# two minutes. Liveness itself is the heartbeats' job, not discovery's.
NODE_TTL_S: Final = 120
# Short so a stale endpoint answer dies quickly. Listeners refresh at 80 % of a TTL (RFC 6762
# §5.2): one query per record every 12 s per client, nothing on a LAN of a few Jetsons.
ENDPOINT_TTL_S: Final = 15
# Room for zeroconf's first three queries (0, ~0.2 s, ~1.2 s); a peer that misses them is
# resolved again at its next announcement.
_RESOLVE_TIMEOUT_MS: Final = 1500
_MAX_PORT: Final = 65535
_MAX_PRIORITY: Final = 255  # VRRP's range (RFC 5798); the config narrows it to 1..254
_MAX_DNS_LABEL_BYTES: Final = 63  # RFC 1035 §2.3.4
_DIGITS: Final = re.compile(r"[0-9]{1,10}")
# How often a node bound to the wildcard looks at its addresses (a new DHCP lease, Wi-Fi that
# joined late). ifaddr, already zeroconf's, over rtnetlink (pyroute2): one getifaddrs() call, a
# few microseconds, no new dependency, and the same code on every platform; a change is
# advertised at most this late, well inside the 15 s an endpoint answer lives.
ADDRESS_POLL_S: Final = 2.0
# How often the primary may re-announce its endpoint when others contradict it: RFC 6762 §6.2
# allows a record to be multicast again after 1 s, except to defend it (§9); four times a
# second bounds what forged or looping goodbyes could make us send.
REANNOUNCE_GAP_S: Final = 0.25
# After another responder's live answer for our endpoint: re-announce once more this late, so
# our cache-flush bit finds its record older than the one second RFC 6762 §10.2 spares.
FLUSH_AFTER_S: Final = 1.1
# zeroconf's goodbye schedule (three sends 125 ms apart), for the SRV and TXT goodbyes we send.
_GOODBYE_SENDS: Final = 3
_GOODBYE_GAP_S: Final = 0.125


@dataclass(frozen=True)
class PeerRecord:
    """What a peer says about itself over mDNS: public, unauthenticated, a hint only."""

    node_id: str
    host: str
    cluster_port: int
    api_port: int
    priority: int
    version: str
    capabilities: tuple[str, ...]
    cluster: str


def endpoint_name(cluster: str) -> str:
    """The endpoint's full service name, `<cluster>._ha-voice._tcp.local.`."""
    return f"{cluster}.{ENDPOINT_SERVICE_TYPE}"


def node_instance(cluster: str, node_id: str) -> str:
    """The instance label of a node's record, `<node_id>@<cluster>`."""
    return f"{node_id}@{cluster}"


def peer_from_txt(
    instance: str, host: str | None, cluster_port: int | None, txt: Mapping[str, str | None]
) -> PeerRecord:
    """The peer a resolved node service describes; RemoteError("malformed") if none."""
    node_id = _text(txt, "node")
    named = node_instance(_text(txt, "cluster"), node_id)
    if named != instance:
        raise RemoteError(
            "malformed", f"TXT node@cluster {named!r} is not the instance {instance!r}"
        )
    if host is None:
        raise RemoteError("malformed", "no IPv4 address")
    if cluster_port is None or not 1 <= cluster_port <= _MAX_PORT:
        raise RemoteError("malformed", f"SRV port {cluster_port!r}")
    caps = txt.get("caps") or ""
    return PeerRecord(
        node_id=node_id,
        host=host,
        cluster_port=cluster_port,
        api_port=_integer(txt, "api_port", 1, _MAX_PORT),
        priority=_integer(txt, "priority", 0, _MAX_PRIORITY),
        version=_text(txt, "version"),
        capabilities=tuple(cap for cap in caps.split(",") if cap),
        cluster=_text(txt, "cluster"),
    )


def _text(txt: Mapping[str, str | None], key: str) -> str:
    value = txt.get(key)
    if value is None:
        raise RemoteError("malformed", f"TXT key {key!r} missing")
    return value


def _integer(txt: Mapping[str, str | None], key: str, low: int, high: int) -> int:
    value = _text(txt, key)
    # Only plain digits: int() would also take " 7", "+7" and "7_0".
    if not _DIGITS.fullmatch(value) or not low <= int(value) <= high:
        raise RemoteError("malformed", f"TXT {key}={value!r} is no integer in {low}..{high}")
    return int(value)


def _check_label(key: str, value: str) -> None:
    """Refuse a name zeroconf would split into several DNS labels or could not encode."""
    if "." in value or not 1 <= len(value.encode()) <= _MAX_DNS_LABEL_BYTES:
        raise ConfigError(
            f"{key} {value!r} cannot be an mDNS instance label: use 1 to 63 bytes without '.'"
        )


def _advertised_address(address: str) -> str:
    """`address`, or for the wildcard this host's address for mDNS (interfaces.py: with or
    without a default route); ConfigError naming listen_address if the host has none."""
    if address != WILDCARD:
        return address
    found = advertised_ipv4()
    if found is None:
        raise ConfigError(
            f"listen_address = {address!r}: no interface but lo is up with an IPv4 address, so "
            "mDNS has no address to advertise; fix: bring up the robot's network, or set "
            "listen_address to this node's address"
        )
    return found


def reachable_address(addresses: Sequence[str]) -> str | None:
    """The first of `addresses` on a network this host is directly on, else the first.

    A node on the robot's network and on Wi-Fi advertises both of its addresses on both
    (python-zeroconf answers with all of a service's addresses on every interface): a client
    on the robot's network must take the robot-network one, which it reaches without a route.
    """
    networks = [interface.network for interface in host_networks()]
    for address in addresses:
        if any(ipaddress.IPv4Address(address) in network for network in networks):
            return address
    return addresses[0] if addresses else None


def _report_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _LOGGER.error(
            "following this node's addresses failed: mDNS may advertise stale ones",
            exc_info=task.exception(),
        )


def _drop_queued_answers(zc: Zeroconf, name: str) -> None:
    """Forget the answers about service `name` that still wait in zeroconf's multicast queues.

    zeroconf delays multicast answers by up to 1.2 s (RFC 6762 §6 and §14), and its
    MulticastOutgoingQueue sends what it queued without asking whether the service is still
    registered. Such a late answer would undo a goodbye, or a new term, in every listener's
    cache for a whole TTL.
    """
    key = name.lower()
    for outgoing in (zc.out_queue, zc.out_delay_queue):
        for group in outgoing.queue:
            # The service's own SRV and TXT, and the PTR (only PTRs have alias_key) to it.
            stale = [
                record
                for record in group.answers
                if record.key == key or getattr(record, "alias_key", None) == key
            ]
            for record in stale:
                del group.answers[record]


def _first_ipv4(info: AsyncServiceInfo) -> str | None:
    return reachable_address(info.parsed_addresses(IPVersion.V4Only))


class Discovery:
    """This node's mDNS presence: its node service, its view of the peers, and the endpoint."""

    def __init__(
        self,
        *,
        cluster: str,
        node_id: str,
        address: str,
        cluster_port: int,
        api_port: int,
        priority: int,
        version: str,
        capabilities: tuple[str, ...] = (),
        interfaces: list[str] | None = None,
        zeroconf: AsyncZeroconf | None = None,
        api_scheme: str = "http",
        wyoming_port: int = 0,
    ) -> None:
        _check_label("cluster", cluster)
        _check_label("node_id", node_id)
        instance = node_instance(cluster, node_id)
        if len(instance.encode()) > _MAX_DNS_LABEL_BYTES:
            raise ConfigError(
                f"node_id {node_id!r} and cluster {cluster!r} name the mDNS instance "
                f"{instance!r}, {len(instance.encode())} bytes: keep the two under "
                f"{_MAX_DNS_LABEL_BYTES} bytes together"
            )
        self._instance = instance
        self.malformed = 0
        self._cluster = cluster
        self._node_id = node_id
        self._address = address
        self._addresses: list[str] = []  # what the records carry (`_advertised_addresses`)
        self._follow: asyncio.Task[None] | None = None
        self._cluster_port = cluster_port
        self._api_port = api_port
        self._priority = priority
        self._version = version
        self._capabilities = capabilities
        self._api_scheme = api_scheme
        self._wyoming_port = wyoming_port  # 0: no Wyoming server to advertise
        self._interfaces: list[str] | InterfaceChoice = interfaces or (
            InterfaceChoice.All if address == WILDCARD else [address]
        )
        self._aiozc = zeroconf
        self._owns_zeroconf = zeroconf is None
        self._own_key = f"{instance}.{NODE_SERVICE_TYPE}".lower()
        self._cluster_suffix = f"@{cluster}.{NODE_SERVICE_TYPE}".lower()
        self._server = f"{node_id}.{cluster}.ha-voice.local."
        self._on_peer: Callable[[PeerRecord], None] | None = None
        self._on_peer_gone: Callable[[str], None] | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._node_info: AsyncServiceInfo | None = None
        self._endpoint_infos: tuple[AsyncServiceInfo, ...] = ()  # answering for these now
        self._endpoint_term: int | None = None
        self._retracted: tuple[AsyncServiceInfo, ...] = ()  # silent, goodbyes not yet sent
        self._endpoint_goodbyes: set[asyncio.Task[None]] = set()
        self._guard = EndpointWatch(self._check_endpoint)
        self._last_reannounce = float("-inf")
        self._reannounce_later: asyncio.TimerHandle | None = None
        self._flush_later: asyncio.TimerHandle | None = None
        self.reannouncements = 0
        self._warned_contradiction = False
        self._endpoint_lock = asyncio.Lock()
        self._peers: dict[str, PeerRecord] = {}  # by lower-cased service name
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._announcing: dict[str, asyncio.Future[Any]] = {}  # by service key
        self._goodbyes: set[asyncio.Future[Any]] = set()
        self._warned = False
        self._closed = False

    async def async_start(
        self, on_peer: Callable[[PeerRecord], None], on_peer_gone: Callable[[str], None]
    ) -> None:
        """Browse for peers and register this node; returns once the name is ours (~1.5 s)."""
        if self._on_peer is not None or self._closed:
            raise LocalError("discovery can be started once, before it is closed")
        self._on_peer, self._on_peer_gone = on_peer, on_peer_gone
        self._addresses = self._advertised_addresses()
        if self._aiozc is None:
            self._aiozc = AsyncZeroconf(interfaces=self._interfaces)
        self._aiozc.zeroconf.async_add_listener(self._guard, None)
        self._browser = AsyncServiceBrowser(
            self._aiozc.zeroconf, NODE_SERVICE_TYPE, handlers=[self._on_state_change]
        )
        info = self._node_service_info()
        try:
            announcement = await self._aiozc.async_register_service(info, allow_name_change=False)
        except NonUniqueNameException as err:
            holder = await self._async_holder(info.name)
            raise ConfigError(
                f"two processes claim node_id {self._node_id} in cluster {self._cluster}: "
                f"{holder} (registered first) and {self._addresses[0]}:{self._cluster_port} (this "
                "one, refused): give every node of a cluster its own node_id"
            ) from err
        self._node_info = info
        self._announce(info, announcement)
        if self._address == WILDCARD and self._owns_zeroconf:
            self._follow = asyncio.get_running_loop().create_task(self._async_follow_addresses())
            self._follow.add_done_callback(_report_end)

    def _advertised_addresses(self) -> list[str]:
        """Every address of this host when bound to the wildcard (each network gets one it
        can reach), else the configured one."""
        if self._address != WILDCARD:
            return [self._address]
        return [str(i.ip) for i in host_networks()] or [_advertised_address(self._address)]

    async def _async_follow_addresses(self) -> None:
        """Re-register on new addresses: zeroconf's sockets are bound to the old ones."""
        while True:
            await asyncio.sleep(ADDRESS_POLL_S)
            addresses = [str(i.ip) for i in host_networks()]
            if addresses and addresses != self._addresses:
                _LOGGER.warning(
                    "this node's addresses changed from %s to %s: advertising the new ones",
                    ", ".join(self._addresses),
                    ", ".join(addresses),
                )
                await self._async_rebind(addresses)

    async def _async_rebind(self, addresses: list[str]) -> None:
        """A new zeroconf on the new addresses, with the same services and browser."""
        async with self._endpoint_lock:
            # Out of the old zeroconf's registry first: its close says goodbye for what is left,
            # and a goodbye for the endpoint's shared PTR must never leave.
            term = self._endpoint_term
            self.retract_endpoint()
            self._retracted = ()
            if self._browser is not None:
                await self._browser.async_cancel()
            await self._cancel_resolutions()
            for future in self._announcing.values():
                future.cancel()
            self._announcing.clear()
            old, self._node_info = self._zeroconf(), None
            await old.async_close()  # goodbyes, where an old address still works
            self._addresses = addresses
            self._aiozc = AsyncZeroconf(interfaces=self._interfaces)
            self._aiozc.zeroconf.async_add_listener(self._guard, None)
            self._browser = AsyncServiceBrowser(
                self._aiozc.zeroconf, NODE_SERVICE_TYPE, handlers=[self._on_state_change]
            )
            info = self._node_service_info()
            self._announce(info, await self._aiozc.async_register_service(info))
            self._node_info = info
        if term is not None:
            await self.async_publish_endpoint(term)

    async def _async_holder(self, name: str) -> str:
        """`host:port` of whoever registered `name`, as far as it answers."""
        info = AsyncServiceInfo(NODE_SERVICE_TYPE, name)
        if await info.async_request(self._zeroconf().zeroconf, _RESOLVE_TIMEOUT_MS):
            return f"{_first_ipv4(info)}:{info.port}"
        return "another process on this network"

    def endpoint_published(self) -> bool:
        """Whether this node currently answers for the cluster's endpoint."""
        return bool(self._endpoint_infos)

    async def async_publish_endpoint(self, term: int) -> None:
        """Answer for the endpoint with this term, announcing it; a no-op for the same term."""
        async with self._endpoint_lock:
            if self._closed or self._on_peer is None:
                raise LocalError("publish the endpoint only between async_start and async_close")
            if self._endpoint_term is not None and term < self._endpoint_term:
                raise LocalError(f"endpoint term {term} < published {self._endpoint_term}")
            if term == self._endpoint_term:
                return
            # A goodbye for our own SRV of an earlier term would delete the same SRV we
            # announce now from listeners' caches.
            for goodbye in self._endpoint_goodbyes:
                goodbye.cancel()
            infos = self._endpoint_service_infos(term)
            zc = self._zeroconf()
            for info in infos:
                if not self._endpoint_infos:
                    announcement = await zc.async_register_service(
                        info, allow_name_change=False, cooperating_responders=True
                    )
                else:
                    self._silence(info)  # no answer for the old term may follow the new one
                    announcement = await zc.async_update_service(info)
                self._announce(info, announcement)
            self._endpoint_infos, self._endpoint_term = infos, term

    def retract_endpoint(self) -> None:
        """Stop answering for the endpoint at once, sending nothing: for the moment this node
        stops leading. Answers still queued are dropped; `async_withdraw_endpoint` says the
        goodbyes. Must run on the event loop."""
        infos, self._endpoint_infos, self._endpoint_term = self._endpoint_infos, (), None
        if not infos:
            return
        zc = self._zeroconf().zeroconf
        for info in infos:
            self._silence(info)
            zc.registry.async_remove(info)
        self._retracted += infos
        for later in (self._reannounce_later, self._flush_later):
            if later is not None:
                later.cancel()
        self._reannounce_later = self._flush_later = None

    async def async_withdraw_endpoint(self) -> None:
        """Stop answering for the endpoint; goodbyes (TTL 0) for its SRV and TXT, never for the
        shared PTR (see the module docstring), go out over the next 250 ms."""
        async with self._endpoint_lock:
            self.retract_endpoint()
            retracted, self._retracted = self._retracted, ()
            for info in retracted:
                task = asyncio.get_running_loop().create_task(self._async_unique_goodbye(info))
                for tracked in (self._goodbyes, self._endpoint_goodbyes):
                    tracked.add(task)
                    task.add_done_callback(tracked.discard)

    async def _async_unique_goodbye(self, info: AsyncServiceInfo) -> None:
        zc = self._zeroconf().zeroconf
        for number in range(_GOODBYE_SENDS):
            if number:
                await asyncio.sleep(_GOODBYE_GAP_S)
            zc.async_send(unique_goodbye(info))

    def _check_endpoint(self, records: list[RecordUpdate]) -> None:
        """zeroconf's record callback: re-announce if a record received contradicts ours."""
        if not self._endpoint_infos:
            return
        found = contradiction(
            self._endpoint_infos, self._endpoint_term or 0, [update.new for update in records]
        )
        if found is None:
            return
        self._reannounce(found.why)
        if found.lingers and self._flush_later is None:
            self._flush_later = asyncio.get_running_loop().call_later(
                FLUSH_AFTER_S, self._flush, found.why
            )

    def _flush(self, why: str) -> None:
        self._flush_later = None
        self._reannounce_now(f"{why}, {FLUSH_AFTER_S} s on (a cache flush)")

    def _reannounce(self, why: str) -> None:
        """Announce the endpoint now, or at the end of the current `REANNOUNCE_GAP_S`."""
        loop = asyncio.get_running_loop()
        wait_s = self._last_reannounce + REANNOUNCE_GAP_S - loop.time()
        if wait_s > 0:
            if self._reannounce_later is None:
                self._reannounce_later = loop.call_later(wait_s, self._reannounce_now, why)
            return
        self._reannounce_now(why)

    def _reannounce_now(self, why: str) -> None:
        self._reannounce_later = None
        if not self._endpoint_infos or self._aiozc is None:
            return
        self._last_reannounce = asyncio.get_running_loop().time()
        self.reannouncements += 1
        level = logging.DEBUG if self._warned_contradiction else logging.WARNING
        self._warned_contradiction = True
        _LOGGER.log(
            level, "mDNS: %s; re-announcing the endpoint (term %s)", why, self._endpoint_term
        )
        zc = self._aiozc.zeroconf
        for info in self._endpoint_infos:
            zc.async_send(reannouncement(info, self.reannouncements))

    async def async_close(self) -> None:
        """Withdraw both services, wait for the goodbyes; idempotent, fine after a failed start."""
        if self._closed:
            return
        self._closed = True
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
        await self.async_withdraw_endpoint()
        if self._browser is not None:
            await self._browser.async_cancel()
        await self._cancel_resolutions()
        if self._node_info is not None:
            await self._async_goodbye(self._node_info)
            self._node_info = None
        await asyncio.gather(*self._goodbyes, return_exceptions=True)
        if self._owns_zeroconf and self._aiozc is not None:
            await self._aiozc.async_close()

    def _zeroconf(self) -> AsyncZeroconf:
        if self._aiozc is None:
            raise LocalError("discovery is not started")
        return self._aiozc

    def _node_service_info(self) -> AsyncServiceInfo:
        txt = {
            "cluster": self._cluster,
            "node": self._node_id,
            "priority": str(self._priority),
            "api_port": str(self._api_port),
            "caps": ",".join(self._capabilities),
            "version": self._version,
        }
        return self._service_info(NODE_SERVICE_TYPE, self._instance, self._cluster_port, txt)

    def _endpoint_service_infos(self, term: int) -> tuple[AsyncServiceInfo, ...]:
        """The endpoint's services: the API, and the Wyoming server where there is one."""
        txt = {
            "cluster": self._cluster,
            "node": self._node_id,
            "term": str(term),
            "version": self._version,
        }
        if self._api_scheme != "http":
            txt["scheme"] = self._api_scheme
        ttl = ENDPOINT_TTL_S
        api = self._service_info(ENDPOINT_SERVICE_TYPE, self._cluster, self._api_port, txt, ttl)
        if not self._wyoming_port:
            return (api,)
        wyoming_txt = {k: v for k, v in txt.items() if k != "scheme"}
        wyoming = self._service_info(
            WYOMING_SERVICE_TYPE, self._cluster, self._wyoming_port, wyoming_txt, ttl
        )
        return api, wyoming

    def _service_info(
        self, type_: str, instance: str, port: int, txt: dict[str, str], ttl: int = NODE_TTL_S
    ) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            type_,
            f"{instance}.{type_}",
            port=port,
            properties=txt,
            server=self._server,
            host_ttl=ttl,
            other_ttl=ttl,
            parsed_addresses=self._addresses,
        )

    def _announce(self, info: AsyncServiceInfo, announcement: Awaitable[Any]) -> None:
        """Keep the announcements in flight (three over 450 ms) where `_silence` can stop them."""
        future = asyncio.ensure_future(announcement)
        self._announcing[info.key] = future
        future.add_done_callback(lambda done: self._announced(info.key, done))

    def _announced(self, key: str, future: asyncio.Future[Any]) -> None:
        if self._announcing.get(key) is future:
            del self._announcing[key]

    def _silence(self, info: AsyncServiceInfo) -> None:
        """Stop whatever zeroconf still means to send about this service.

        zeroconf's announcement task runs on after an unregister or an update: measured in
        tests/integration/test_discovery.py, the last announcement of a withdrawn endpoint
        often went out after its first goodbye, and listeners believed it for a whole TTL.
        """
        announcing = self._announcing.pop(info.key, None)
        if announcing is not None:
            announcing.cancel()
        _drop_queued_answers(self._zeroconf().zeroconf, info.name)

    async def _async_goodbye(self, info: AsyncServiceInfo) -> None:
        """Unregister the service; close waits for its goodbyes (three over 250 ms)."""
        self._silence(info)
        goodbye = asyncio.ensure_future(await self._zeroconf().async_unregister_service(info))
        self._goodbyes.add(goodbye)
        goodbye.add_done_callback(self._goodbyes.discard)

    def _on_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """The browser's callback, run inside zeroconf's record handling: never blocks or raises."""
        key = name.lower()
        if key == self._own_key or not key.endswith(self._cluster_suffix) or self._closed:
            return
        if state_change is ServiceStateChange.Removed:
            self._forget(key)
        else:
            self._start_resolution(key, name)

    def _start_resolution(self, key: str, name: str) -> None:
        # The newest event wins: its records are already in the cache the resolution reads.
        previous = self._resolving.pop(key, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.get_running_loop().create_task(self._async_resolve(key, name))
        self._resolving[key] = task
        task.add_done_callback(lambda done: self._resolution_done(key, done))

    def _resolution_done(self, key: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(key) is task:
            del self._resolving[key]
        if not task.cancelled() and task.exception() is not None:
            _LOGGER.error("resolving %s failed", key, exc_info=task.exception())

    async def _cancel_resolutions(self) -> None:
        tasks = list(self._resolving.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _async_resolve(self, key: str, name: str) -> None:
        info = AsyncServiceInfo(NODE_SERVICE_TYPE, name)
        if not await info.async_request(self._zeroconf().zeroconf, _RESOLVE_TIMEOUT_MS):
            _LOGGER.debug("no answer resolving %s", name)
            return
        instance = name[: -len(NODE_SERVICE_TYPE) - 1]
        try:
            record = peer_from_txt(instance, _first_ipv4(info), info.port, info.decoded_properties)
        except RemoteError as err:
            self._count_malformed(name, err)
            return
        self._accept(key, record)

    def _accept(self, key: str, record: PeerRecord) -> None:
        if record.cluster != self._cluster:
            # A node that moved to another cluster is gone from ours.
            self._forget(key)
            return
        if self._peers.get(key) == record:
            return
        self._peers[key] = record
        assert self._on_peer is not None
        self._call_soon(self._on_peer, record)

    def _forget(self, key: str) -> None:
        task = self._resolving.pop(key, None)
        if task is not None:
            task.cancel()
        record = self._peers.pop(key, None)
        if record is not None:
            assert self._on_peer_gone is not None
            self._call_soon(self._on_peer_gone, record.node_id)

    def _call_soon(self, callback: Callable[[_T], None], argument: _T) -> None:
        """Run a user callback as its own loop callback, after what is running now."""
        asyncio.get_running_loop().call_soon(self._maybe_call, callback, argument)

    def _maybe_call(self, callback: Callable[[_T], None], argument: _T) -> None:
        if not self._closed:
            callback(argument)

    def _count_malformed(self, name: str, err: RemoteError) -> None:
        self.malformed += 1
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        _LOGGER.log(level, "ignoring malformed discovery record %s: %s", name, err)


async def async_resolve_endpoint(
    cluster: str, timeout_s: float, interfaces: list[str] | None = None
) -> tuple[str, int, dict[str, str]] | None:
    """(host, port, TXT) of the cluster's endpoint, or None if nobody answers within timeout_s."""
    aiozc = AsyncZeroconf(interfaces=interfaces or InterfaceChoice.All)
    try:
        info = AsyncServiceInfo(ENDPOINT_SERVICE_TYPE, endpoint_name(cluster))
        found = await info.async_request(aiozc.zeroconf, timeout_s * 1000)
    finally:
        await aiozc.async_close()
    host = _first_ipv4(info)
    if not found or host is None or info.port is None:
        return None
    txt = {key: value or "" for key, value in info.decoded_properties.items()}
    return host, info.port, txt
