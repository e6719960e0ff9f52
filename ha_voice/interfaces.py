"""This host's IPv4 interfaces as the node sees them: which addresses it has, which one to
advertise, and what the node still waits for before its network is usable.

Invariants:
- Nothing here depends on a default route: a Jetson that sits only on the Go2's network
  (192.168.123.x, no gateway) has an address to advertise, the one of the interface that is up.
- Nothing here blocks or raises for the state of the network; "not there yet" is an answer.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from pathlib import Path
from typing import Final, Protocol

import ifaddr

__all__ = ["WILDCARD", "advertised_ipv4", "host_networks", "local_ipv4", "network_wait_reason"]

WILDCARD: Final = "0.0.0.0"
# Where mDNS goes: the kernel's source address for it is the one to advertise when there is a
# route for it (the interface the operator made the multicast or default route go through).
_MDNS_GROUP: Final = ("224.0.0.251", 5353)
_IFF_UP: Final = 0x1  # <linux/if.h>
_SYS_NET: Final = Path("/sys/class/net")


class NetworkSettings(Protocol):
    """The keys `network_wait_reason` looks at (a `Config` has them)."""

    @property
    def listen_address(self) -> str: ...
    @property
    def api_listen_address(self) -> str: ...
    @property
    def mdns(self) -> bool: ...
    @property
    def vip_interface(self) -> str | None: ...


def local_ipv4() -> list[tuple[str, str]]:
    """(interface, address) of each IPv4 address on an interface that is up, loopback left
    out, in the kernel's order."""
    found = []
    for adapter in ifaddr.get_adapters():
        if not _is_up(adapter.name):
            continue
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ipaddress.IPv4Address(ip.ip).is_loopback:
                found.append((adapter.name, ip.ip))
    return found


def host_networks() -> list[ipaddress.IPv4Interface]:
    """This host's IPv4 addresses with their networks, loopback and link-local left out, in
    address order: what a wildcard-bound node advertises, and what tells a peer's or client's
    reachable address (discovery.py)."""
    found = {
        ipaddress.IPv4Interface(f"{ip.ip}/{ip.network_prefix}")
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str)
    }
    usable = (i for i in found if not (i.ip.is_loopback or i.ip.is_link_local))
    return sorted(usable, key=lambda i: i.ip)


def advertised_ipv4() -> str | None:
    """The address to advertise for a wildcard bind: the source of this host's route for
    mDNS if it has one, else the first address of an interface that is up; None if neither."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(_MDNS_GROUP)  # picks a route and a source address; sends nothing
            return str(probe.getsockname()[0])
        except OSError:
            pass  # no route for multicast, no default route: a robot-only network
    addresses = local_ipv4()
    return addresses[0][1] if addresses else None


def network_wait_reason(settings: NetworkSettings) -> str | None:
    """What the node waits for before it can bind and advertise, in words naming the key;
    None once the network is usable."""
    for key in ("listen_address", "api_listen_address"):
        address = getattr(settings, key)
        if address != WILDCARD and not _assigned(address):
            return f"{key} = {address!r} is not an address of this host yet"
    interface = settings.vip_interface
    if interface is not None and not (_SYS_NET / interface).exists():
        return f"vip_interface = {interface!r}: no such interface yet"
    if settings.mdns and settings.listen_address == WILDCARD and not local_ipv4():
        return (
            f"listen_address = {WILDCARD!r} with mdns = true: no interface but lo is up with "
            "an IPv4 address to advertise"
        )
    return None


def _assigned(address: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError as exc:
            return exc.errno != errno.EADDRNOTAVAIL
    return True


def _is_up(name: str) -> bool:
    try:
        return int((_SYS_NET / name / "flags").read_text(), 16) & _IFF_UP != 0
    except (OSError, ValueError):
        return True  # no sysfs (not Linux): trust that a listed address is usable
