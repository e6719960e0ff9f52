"""The floating IPv4 address the primary holds: keepalived's `virtual_ipaddress`.

The primary adds the address to an interface with netlink (pyroute2) and announces it with
gratuitous ARP so that switches and clients move it to this node's MAC at once; it removes the
address the moment it steps down.

Invariants:
- `async_acquire` and `async_release` are idempotent: an address already present (or already
  absent) is success, so a retried role change never fails on its own earlier half.
- No gratuitous ARP leaves after `async_release` has removed the address, nor while
  `may_announce()` is false (the daemon: while this node holds no valid lease): sends and the
  removal are ordered by one lock, so a stale announcement can never pull the address back to
  a node that no longer holds it.
- At most one announcement task runs; `async_acquire` restarts it, `async_release` and
  `async_close` cancel it before the address goes.
- Every netlink and packet-socket call runs on the FloatingIP's own worker thread, never on the
  event loop nor on the loop's shared executor (which speech work may fill). That thread keeps
  one rtnetlink socket and one packet socket open for the life of the object: opening them
  (pyroute2's IPRoute, a link lookup, a raw socket) cost ~13 ms of a takeover. A socket that
  fails is closed and opened again once; the interface is looked up by name on every acquire
  and release (~0.1 ms), and the packet socket follows a changed index, so an interface that
  was deleted and created again is found again.
- With `lifetime_s`, the address is added with that kernel lifetime (valid_lft) and renewed
  four times per lifetime while `may_announce()`: a daemon killed with SIGKILL, or paused,
  loses the address within `lifetime_s` by the kernel's own timer instead of answering ARP
  for it until it is restarted.
- Failures the operator can fix (missing interface, missing capabilities) raise
  `FloatingIPError` naming the interface and the fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from ha_voice.errors import LocalError

__all__ = ["FloatingIP", "FloatingIPError", "garp_frame"]

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")

# Linux IFNAMSIZ is 16 including the trailing NUL; an address label obeys the same limit.
_IFNAMSIZ = 15
_LABEL_SUFFIX = ":hv"
_ARPHRD_ETHER = 1
_ETH_P_ARP = 0x0806
_ETH_P_IP = 0x0800
_ARPOP_REQUEST = 1
_BROADCAST_MAC = b"\xff" * 6
_ZERO_MAC = b"\x00" * 6
# Ethernet header (dst, src, ethertype) + ARP body (RFC 826): 14 + 28 = 42 bytes.
_GARP = struct.Struct("!6s6sHHHBBH6s4s6s4s")
_PERMISSION_FIX = (
    "run as root or give CAP_NET_ADMIN + CAP_NET_RAW "
    "(systemd: AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW)"
)


class FloatingIPError(LocalError):
    """The floating IP could not be added, removed or announced; the message says the fix."""


@dataclass(frozen=True)
class _Link:
    """The interface as netlink sees it now."""

    index: int
    mac: bytes


def garp_frame(mac: bytes, address: ipaddress.IPv4Address) -> bytes:
    """The 42-byte broadcast gratuitous ARP request announcing `address` at `mac`."""
    # An ARP Announcement (RFC 5227 §2.3): a request with sender IP == target IP; §3 explains
    # why a request rather than a reply, and keepalived's send_gratuitous_arp sends requests
    # too. Receivers ignore the target MAC; §2.1.1 says to zero it (keepalived uses all-ones).
    ip = address.packed
    return _GARP.pack(
        _BROADCAST_MAC, mac, _ETH_P_ARP, 1, _ETH_P_IP, 6, 4, _ARPOP_REQUEST, mac, ip, _ZERO_MAC, ip
    )


def _parse_cidr(cidr: str) -> ipaddress.IPv4Interface:
    """`cidr` as an IPv4 host address with prefix, or ValueError saying what is expected."""
    example = "expected an IPv4 address with a prefix length, e.g. 192.168.1.50/24"
    if "/" not in cidr:
        raise ValueError(f"floating IP {cidr!r}: {example}")
    try:
        interface = ipaddress.IPv4Interface(cidr.strip())
    except ValueError as err:
        raise ValueError(f"floating IP {cidr!r}: {example} ({err})") from None
    address, network = interface.ip, interface.network
    if address.is_unspecified or address.is_loopback or address.is_multicast:
        raise ValueError(f"floating IP {cidr!r}: {address} cannot be a host address")
    if network.prefixlen < 31 and address in (network.network_address, network.broadcast_address):
        raise ValueError(f"floating IP {cidr!r}: {address} is the network or broadcast address")
    return interface


def _check_interface_name(interface: str) -> None:
    """ValueError unless `interface` could name a Linux network interface."""
    if not interface or len(interface) > _IFNAMSIZ or "/" in interface or interface.isspace():
        raise ValueError(
            f"floating IP interface {interface!r}: expected a Linux interface name of 1 to "
            f"{_IFNAMSIZ} characters, e.g. eth0"
        )


def _label_for(interface: str) -> str | None:
    """The address label `<ifname>:hv` (shown by ifconfig and `ip addr`), if it fits."""
    label = interface + _LABEL_SUFFIX
    return label if len(label) <= _IFNAMSIZ else None


class _Rtnl:
    """A typed face on pyroute2's IPRoute for the four calls this module needs."""

    def __init__(self, interface: str) -> None:
        # Imported here: pyroute2 takes ~0.5 s to import and only a node with a floating IP
        # needs it. No stubs or py.typed ship with it, hence the narrow ignore.
        from pyroute2 import IPRoute  # type: ignore[import-untyped]  # noqa: PLC0415

        self._interface = interface
        # A fresh netlink socket opens in the calling process's network namespace.
        self._ipr: Any = IPRoute()

    def close(self) -> None:
        """Close the netlink socket; never raises."""
        with contextlib.suppress(Exception):
            self._ipr.close()

    def link(self) -> _Link | None:
        """The interface's index and MAC, or None if there is no such interface."""
        code, messages = self._call(self._ipr.link, "get", ifname=self._interface)
        if code == errno.ENODEV:
            return None
        self._raise_for(code, "look up")
        (message,) = messages
        if int(message["ifi_type"]) != _ARPHRD_ETHER:
            raise FloatingIPError(
                f"interface {self._interface!r} is not Ethernet, so it cannot carry a floating "
                "IP announced by ARP; choose the Ethernet or Wi-Fi interface the clients share"
            )
        return _Link(
            int(message["index"]), bytes.fromhex(str(message.get("address")).replace(":", ""))
        )

    def addresses(self, index: int) -> list[ipaddress.IPv4Interface]:
        """The IPv4 addresses on interface `index`."""
        code, messages = self._call(self._ipr.get_addr, family=socket.AF_INET, index=index)
        self._raise_for(code, "list the addresses of")
        return [
            ipaddress.IPv4Interface(f"{message.get('address')}/{int(message['prefixlen'])}")
            for message in messages
            if int(message["index"]) == index
        ]

    def add(
        self,
        index: int,
        vip: ipaddress.IPv4Interface,
        label: str | None,
        lifetime_s: int | None,
        command: str = "add",
    ) -> bool:
        """Add `vip` to interface `index` (valid for `lifetime_s`, or for ever); False if it
        was already there. `command="replace"` renews the lifetime of an address present."""
        extra: dict[str, Any] = {"label": label} if label else {}
        if lifetime_s is not None:
            extra.update(valid_lft=lifetime_s, preferred_lft=lifetime_s)
        code, _ = self._call(
            self._ipr.addr,
            command,
            index=index,
            address=str(vip.ip),
            prefixlen=vip.network.prefixlen,
            **extra,
        )
        if code == errno.EEXIST:
            return False
        self._raise_for(code, f"add {vip} to")
        return True

    def delete(self, index: int, vip: ipaddress.IPv4Interface) -> bool:
        """Remove `vip` from interface `index`; False if it was not there."""
        code, _ = self._call(
            self._ipr.addr, "del", index=index, address=str(vip.ip), prefixlen=vip.network.prefixlen
        )
        if code == errno.EADDRNOTAVAIL:
            return False
        self._raise_for(code, f"remove {vip} from")
        return True

    @staticmethod
    def _call(method: Any, *args: Any, **kwargs: Any) -> tuple[int, list[Any]]:
        """(0, messages) or (errno, []) for a failed netlink request."""
        from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]  # noqa: PLC0415

        try:
            return 0, list(method(*args, **kwargs))
        except NetlinkError as err:
            return int(err.code), []

    def _raise_for(self, code: int, action: str) -> None:
        """FloatingIPError for a failed request, naming the interface and the fix."""
        if code == 0:
            return
        if code in (errno.EPERM, errno.EACCES):
            raise FloatingIPError(
                f"cannot {action} interface {self._interface!r}: permission denied; "
                + _PERMISSION_FIX
            )
        raise FloatingIPError(f"cannot {action} interface {self._interface!r}: {_strerror(code)}")


def _strerror(code: int) -> str:
    """'No such device (ENODEV)' for 19."""
    return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"


def _open_packet_socket(interface: str) -> socket.socket:
    """A raw AF_PACKET socket bound to `interface`, for sending whole Ethernet frames."""
    try:
        # Protocol 0: the kernel delivers no received frames to this socket, so a send-only
        # socket never queues the segment's traffic.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError:
        raise FloatingIPError(
            f"cannot open a raw socket to announce the floating IP on {interface!r}: "
            f"permission denied; {_PERMISSION_FIX}"
        ) from None
    try:
        sock.bind((interface, 0))
    except OSError as err:
        sock.close()
        raise FloatingIPError(
            f"cannot bind a raw socket to interface {interface!r}: {err.strerror}"
        ) from None
    return sock


class _Sockets:
    """The rtnetlink and packet sockets one FloatingIP keeps open; used on its worker only."""

    def __init__(self, interface: str) -> None:
        self._interface = interface
        self._rtnl: _Rtnl | None = None
        self._packet: socket.socket | None = None
        self._packet_index = -1
        self.opened = 0  # rtnetlink sockets opened so far: one for the life of the object

    def netlink(self, request: Callable[[_Rtnl], _T]) -> _T:
        """`request` on the open rtnetlink socket; reopened and retried once if it fails."""
        for attempt in (1, 2):
            if self._rtnl is None:
                self._rtnl = _Rtnl(self._interface)
                self.opened += 1
            try:
                return request(self._rtnl)
            except FloatingIPError:
                raise
            except Exception as err:  # a broken socket, a lost reply: pyroute2's own types
                self.close_netlink()
                if attempt == 2:
                    raise FloatingIPError(
                        f"netlink request for interface {self._interface!r} failed twice: {err!r}"
                    ) from err
                _LOGGER.warning("netlink socket failed (%r); opening a new one", err)
        raise AssertionError("unreachable")

    def send(self, link: _Link, frame: bytes) -> None:
        """Send `frame` on `link`, reopening the packet socket for a new index or an error."""
        for attempt in (1, 2):
            if self._packet is None or self._packet_index != link.index:
                self.close_packet()
                self._packet = _open_packet_socket(self._interface)
                self._packet_index = link.index
            try:
                self._packet.send(frame)
                return
            except OSError:
                self.close_packet()
                if attempt == 2:
                    raise

    def prove_packet(self, link: _Link) -> None:
        """Open the packet socket for `link` now: FloatingIPError without CAP_NET_RAW."""
        if self._packet is None or self._packet_index != link.index:
            self.close_packet()
            self._packet = _open_packet_socket(self._interface)
            self._packet_index = link.index

    def close_packet(self) -> None:
        if self._packet is not None:
            self._packet.close()
            self._packet, self._packet_index = None, -1

    def close_netlink(self) -> None:
        if self._rtnl is not None:
            self._rtnl.close()
            self._rtnl = None

    def close(self) -> None:
        self.close_packet()
        self.close_netlink()


class FloatingIP:
    """One floating IPv4 address on one interface, held while this node is primary."""

    def __init__(
        self,
        cidr: str,
        interface: str,
        *,
        garp_count: int = 5,
        garp_interval_s: float = 0.2,
        garp_repeat_delay_s: float = 5.0,
        garp_repeat_count: int = 5,
        lifetime_s: int | None = None,
    ) -> None:
        _check_interface_name(interface)
        if lifetime_s is not None and lifetime_s < 2:
            raise ValueError(f"lifetime_s must be at least 2 s (got {lifetime_s})")
        _check_garp_settings(garp_count, garp_interval_s, garp_repeat_delay_s, garp_repeat_count)
        self.vip = _parse_cidr(cidr)
        self.interface = interface
        self.garp_count = garp_count
        self.garp_interval_s = garp_interval_s
        self.garp_repeat_delay_s = garp_repeat_delay_s
        self.garp_repeat_count = garp_repeat_count
        self.lifetime_s = lifetime_s
        self.garps_sent = 0
        self.renewals = 0
        self._announcer: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        # Serialises acquire and release, so a role change never interleaves with its undo.
        self._role_lock = asyncio.Lock()
        # Orders every GARP send against the address's removal (see the module invariants).
        self._send_lock = threading.Lock()
        self._announcing = False
        self._sockets = _Sockets(interface)
        self._worker: ThreadPoolExecutor | None = None
        # Asked (on the worker thread) right before each GARP: a primary paused past its lease
        # must not pull the address back when it resumes, before it has stepped down.
        self.may_announce: Callable[[], bool] = lambda: True

    def __repr__(self) -> str:
        return f"FloatingIP({str(self.vip)!r}, {self.interface!r})"

    @property
    def netlink_sockets_opened(self) -> int:
        """How many rtnetlink sockets this object opened: 1 unless one failed."""
        return self._sockets.opened

    async def async_acquire(self) -> None:
        """Add the address (if absent) and announce it: one burst now, a repeat burst later."""
        async with self._role_lock:
            await self._async_stop_announcing()
            link = await self._in_worker(self._add_and_arm)
            frame = garp_frame(link.mac, self.vip.ip)
            self._announcer = asyncio.create_task(
                self._async_announce(link, frame), name=f"ha-voice garp {self.vip.ip}"
            )
            if self.lifetime_s is not None:
                self._keeper = asyncio.create_task(
                    self._async_keep(link), name=f"ha-voice renew {self.vip.ip}"
                )

    async def async_release(self) -> None:
        """Stop announcing and remove the address (if present)."""
        async with self._role_lock:
            await self._async_stop_announcing()
            await self._in_worker(self._disarm_and_remove)

    async def async_close(self) -> None:
        """Release the address and close the sockets; the object may be acquired again
        afterwards (it opens new ones)."""
        await self.async_release()
        async with self._role_lock:
            worker, self._worker = self._worker, None
            if worker is not None:
                await asyncio.get_running_loop().run_in_executor(worker, self._sockets.close)
                worker.shutdown(wait=False)

    def held(self) -> bool:
        """Whether the address is on the interface now (False if the interface is gone).

        Blocks for one netlink dump on the worker thread; on the event loop prefer `async_held`.
        """
        return self._executor().submit(self._held_now).result()

    async def async_held(self) -> bool:
        """`held()` without blocking the event loop."""
        return await self._in_worker(self._held_now)

    async def async_reconcile_at_start(self) -> bool:
        """Remove an address left over from an earlier run; True if there was one."""
        async with self._role_lock:
            removed = await self._in_worker(self._remove_leftover)
        if removed:
            # A node that is not primary must not answer for the address: keepalived removes
            # its virtual addresses at start in the same way, before the first election.
            _LOGGER.warning(
                "floating IP %s was on %s at start while this node is not primary; removed it",
                self.vip,
                self.interface,
            )
        return removed

    def _executor(self) -> ThreadPoolExecutor:
        if self._worker is None:
            # One thread: the sockets are never shared between threads, and pyroute2's sync
            # IPRoute drives a private event loop that cannot run in a thread whose loop runs.
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ha-voice-vip")
        return self._worker

    async def _in_worker(self, function: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor(), function)

    def _add_and_arm(self) -> _Link:
        """Blocking: add the address and allow GARPs; FloatingIPError if that cannot be done."""
        link = self._sockets.netlink(self._require_link)
        # Prove CAP_NET_RAW before changing anything, so a failed acquire leaves no address.
        self._sockets.prove_packet(link)
        # Note: if the address is the first in its subnet on the interface it becomes the
        # primary address, and removing it drops the subnet's secondaries too unless
        # net.ipv4.conf.<if>.promote_secondaries=1; keepalived's usual /32 VIP avoids this.
        label = _label_for(self.interface)
        lifetime_s = self.lifetime_s
        added = self._sockets.netlink(
            lambda rtnl: rtnl.add(link.index, self.vip, label, lifetime_s)
        )
        if not added and lifetime_s is not None:  # one left by us: give it a whole lifetime
            self._sockets.netlink(
                lambda rtnl: rtnl.add(link.index, self.vip, label, lifetime_s, "replace")
            )
        with self._send_lock:
            self._announcing = True
        _LOGGER.info(
            "floating IP %s %s on %s", self.vip, "added" if added else "already", self.interface
        )
        return link

    def _disarm_and_remove(self) -> None:
        """Blocking: forbid further GARPs, then remove the address wherever it is listed."""
        with self._send_lock:
            self._announcing = False
        removed = self._sockets.netlink(self._delete_if_linked)
        if removed:
            _LOGGER.info("floating IP %s removed from %s", self.vip, self.interface)

    def _remove_leftover(self) -> bool:
        """Blocking: like `_disarm_and_remove`, but a missing interface is an error."""
        with self._send_lock:
            self._announcing = False
        return self._sockets.netlink(lambda rtnl: self._delete_all(rtnl, self._require_link(rtnl)))

    def _held_now(self) -> bool:
        """Blocking: whether the address is on the interface, with any prefix length."""

        def held(rtnl: _Rtnl) -> bool:
            link = rtnl.link()
            return link is not None and any(
                entry.ip == self.vip.ip for entry in rtnl.addresses(link.index)
            )

        return self._sockets.netlink(held)

    def _delete_if_linked(self, rtnl: _Rtnl) -> bool:
        link = rtnl.link()
        return link is not None and self._delete_all(rtnl, link)

    def _delete_all(self, rtnl: _Rtnl, link: _Link) -> bool:
        """Remove every entry of the address on `link`, whatever its prefix; True if any."""
        entries = [entry for entry in rtnl.addresses(link.index) if entry.ip == self.vip.ip]
        removed = [rtnl.delete(link.index, entry) for entry in entries]
        return any(removed)

    def _require_link(self, rtnl: _Rtnl) -> _Link:
        """The interface, or FloatingIPError saying it is missing from this namespace."""
        link = rtnl.link()
        if link is None:
            raise FloatingIPError(
                f"floating IP {self.vip}: interface {self.interface!r} does not exist in this "
                "network namespace; set the floating IP's interface to one `ip link` lists"
            )
        return link

    async def _async_stop_announcing(self) -> None:
        """Cancel the announcement and renewal tasks, if any, and wait until they have ended."""
        tasks = {t for t in (self._announcer, self._keeper) if t is not None and not t.done()}
        self._announcer = self._keeper = None
        for task in tasks:
            task.cancel()
        if tasks:
            # asyncio.wait, not `await task`: our own cancellation must still propagate.
            await asyncio.wait(tasks)

    async def _async_keep(self, link: _Link) -> None:
        """Renew the address's lifetime four times per lifetime while `may_announce()`: a
        daemon that dies, or stops, loses the address within `lifetime_s` (the kernel's own
        timer), instead of answering ARP for it until it is restarted."""
        assert self.lifetime_s is not None
        while True:
            await asyncio.sleep(self.lifetime_s / 4)
            try:
                renewed = await self._in_worker(partial(self._renew_if_announcing, link))
            except FloatingIPError as err:
                _LOGGER.warning("renewing floating IP %s failed: %s", self.vip, err)
                continue
            if renewed:
                self.renewals += 1

    def _renew_if_announcing(self, link: _Link) -> bool:
        """Blocking: give the address a whole lifetime again, unless release has begun."""
        with self._send_lock:
            if not self._announcing or not self.may_announce():
                return False
            label = _label_for(self.interface)
            return self._sockets.netlink(
                lambda rtnl: rtnl.add(link.index, self.vip, label, self.lifetime_s, "replace")
            )

    async def _async_announce(self, link: _Link, frame: bytes) -> None:
        """The first burst now, then keepalived's repeat burst after the master delay."""
        # keepalived sends vrrp_garp_master_repeat (default 5) GARPs on becoming master and a
        # second set after vrrp_garp_master_delay (default 5 s), for caches and switches that
        # missed the first: a port still coming up, or a late frame from the old primary.
        await self._async_burst(link, frame, self.garp_count)
        if self.garp_repeat_count:
            await asyncio.sleep(self.garp_repeat_delay_s)
            await self._async_burst(link, frame, self.garp_repeat_count)

    async def _async_burst(self, link: _Link, frame: bytes, count: int) -> None:
        """Send `count` GARPs `garp_interval_s` apart; a send error ends the burst, logged."""
        for number in range(count):
            if number:
                await asyncio.sleep(self.garp_interval_s)
            try:
                sent = await self._in_worker(partial(self._send_if_announcing, link, frame))
            except (OSError, FloatingIPError) as err:
                # An interface that is down (ENETDOWN) or a full queue (ENOBUFS) is transient:
                # keepalived logs the failed send and carries on; so does the repeat burst.
                _LOGGER.warning(
                    "gratuitous ARP for %s on %s failed: %s", self.vip, self.interface, err
                )
                return
            if not sent:
                return
            self.garps_sent += 1

    def _send_if_announcing(self, link: _Link, frame: bytes) -> bool:
        """Blocking: send one GARP unless release has begun; whether it was sent."""
        with self._send_lock:
            if not self._announcing or not self.may_announce():
                return False
            self._sockets.send(link, frame)
            return True


def _check_garp_settings(count: int, interval_s: float, delay_s: float, repeat: int) -> None:
    """ValueError naming the first GARP setting out of range."""
    if count < 1:
        raise ValueError(f"garp_count must be at least 1 (got {count}): the VIP must be announced")
    if repeat < 0:
        raise ValueError(f"garp_repeat_count must be 0 (no repeat burst) or more (got {repeat})")
    if interval_s < 0 or delay_s < 0:
        raise ValueError(
            f"garp_interval_s and garp_repeat_delay_s must be >= 0 s "
            f"(got {interval_s} and {delay_s})"
        )
