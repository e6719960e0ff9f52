"""The floating IP on real interfaces: two network namespaces joined by a veth pair.

Needs root to create the namespaces (CI runs as root); skipped with the reason otherwise. The
code under test runs in namespace A through `ip netns exec`, so its netlink and packet sockets
live there; namespace B plays the client that must learn the new MAC.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ha_voice.cluster.vip import FloatingIP

VIP = "10.214.0.50"
CIDR = f"{VIP}/24"
WRONG_MAC = "02:00:00:00:00:99"

# Every script imports the module under test the same way and reports one JSON line.
PRELUDE = """\
import asyncio, json
from ha_voice.cluster.vip import FloatingIP, FloatingIPError
"""

# A raw AF_PACKET capture of ARP frames on one interface: prints "ready" once listening, then a
# JSON list of [monotonic time, frame hex] after `want` frames or `timeout_s`.
CAPTURE = """\
import json, socket, sys, time
interface, want, timeout_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
sock.bind((interface, 0x0806))
sock.settimeout(0.05)
print("ready", flush=True)
frames, deadline = [], time.monotonic() + timeout_s
while len(frames) < want and time.monotonic() < deadline:
    try:
        frame = sock.recv(2048)
    except socket.timeout:
        continue
    frames.append([time.monotonic(), frame.hex()])
print(json.dumps(frames), flush=True)
"""


@dataclass(frozen=True)
class Pair:
    """Namespaces A and B; veth A lives in A, veth B in B (each named like its namespace)."""

    ns_a: str
    ns_b: str
    mac_a: str

    @property
    def veth_a(self) -> str:
        return self.ns_a

    @property
    def veth_b(self) -> str:
        return self.ns_b


def _ip(*args: str) -> str:
    """`ip args…`; its stdout, or an assertion error with its stderr."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode == 0, f"ip {' '.join(args)}: {result.stderr.strip()}"
    return result.stdout


def _delete_namespaces(*names: str) -> None:
    """Delete the namespaces if present; their veth ends go with them."""
    for name in names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10, check=False)


def _build(ns_a: str, ns_b: str) -> str:
    """Join `ns_a` and `ns_b` with a veth pair, 10.214.0.1/24 and .2/24; vethA's MAC."""
    _ip("netns", "add", ns_b)
    _ip("link", "add", ns_a, "netns", ns_a, "type", "veth", "peer", "name", ns_b, "netns", ns_b)
    for ns, address in ((ns_a, "10.214.0.1/24"), (ns_b, "10.214.0.2/24")):
        _ip("-n", ns, "addr", "add", address, "dev", ns)
        _ip("-n", ns, "link", "set", ns, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
    (link,) = json.loads(_ip("-n", ns_a, "-j", "link", "show", "dev", ns_a))
    return str(link["address"])


@pytest.fixture
def pair() -> Iterator[Pair]:
    """A fresh veth pair between two fresh namespaces, deleted whatever the test does."""
    ns_a, ns_b = f"hvv{os.getpid()}a", f"hvv{os.getpid()}b"
    _delete_namespaces(ns_a, ns_b)  # left over from a killed run with the same pid
    created = subprocess.run(
        ["ip", "netns", "add", ns_a], capture_output=True, text=True, timeout=10, check=False
    )
    if created.returncode != 0:
        pytest.skip(f"`ip netns add` failed (needs root): {created.stderr.strip()}")
    try:
        yield Pair(ns_a, ns_b, _build(ns_a, ns_b))
    finally:
        _delete_namespaces(ns_a, ns_b)


def _run_in(ns: str, body: str, *prefix: str) -> dict[str, object]:
    """Run PRELUDE + `body` in namespace `ns` (after `prefix`, e.g. setpriv); its JSON line."""
    command = ["ip", "netns", "exec", ns, *prefix, sys.executable, "-c", PRELUDE + body]
    result = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def _addresses(pair: Pair) -> list[str]:
    """The IPv4 addresses on veth A, as `ip -4 addr show` lists them (CIDR strings)."""
    (link,) = json.loads(_ip("-n", pair.ns_a, "-j", "-4", "addr", "show", "dev", pair.veth_a))
    return [f"{entry['local']}/{entry['prefixlen']}" for entry in link["addr_info"]]


def _labels(pair: Pair) -> list[str]:
    (link,) = json.loads(_ip("-n", pair.ns_a, "-j", "-4", "addr", "show", "dev", pair.veth_a))
    return [str(entry.get("label")) for entry in link["addr_info"]]


def _acquire_script(interface: str, wait_for: int, **settings: float) -> str:
    """A script that acquires, waits until `wait_for` GARPs went out, and reports."""
    arguments = ", ".join(f"{key}={value!r}" for key, value in settings.items())
    return textwrap.dedent(f"""\
        async def main():
            vip = FloatingIP({CIDR!r}, {interface!r}, {arguments})
            await vip.async_acquire()
            for _ in range(500):
                if vip.garps_sent >= {wait_for}:
                    break
                await asyncio.sleep(0.01)
            print(json.dumps({{"sent": vip.garps_sent, "held": vip.held()}}))
        asyncio.run(main())
        """)


def test_acquire_and_release_are_idempotent(pair: Pair) -> None:
    acquire_twice = textwrap.dedent(f"""\
        async def main():
            vip = FloatingIP({CIDR!r}, {pair.veth_a!r}, garp_count=1, garp_repeat_count=0)
            await vip.async_acquire()
            await vip.async_acquire()
            # held() from inside a running loop and the async twin must agree.
            print(json.dumps({{"held": vip.held(), "async_held": await vip.async_held()}}))
        asyncio.run(main())
        """)
    assert _run_in(pair.ns_a, acquire_twice) == {"held": True, "async_held": True}
    assert CIDR in _addresses(pair)
    assert f"{pair.veth_a}:hv" in _labels(pair)

    release_twice = textwrap.dedent(f"""\
        async def main():
            vip = FloatingIP({CIDR!r}, {pair.veth_a!r})
            await vip.async_release()
            await vip.async_release()
            await vip.async_close()
            print(json.dumps({{"held": vip.held()}}))
        asyncio.run(main())
        """)
    assert _run_in(pair.ns_a, release_twice) == {"held": False}
    assert _addresses(pair) == ["10.214.0.1/24"]


def test_one_netlink_socket_serves_every_role_change(pair: Pair) -> None:
    # A takeover must not pay for opening sockets: the object keeps one for its whole life.
    script = textwrap.dedent(f"""\
        async def main():
            vip = FloatingIP({CIDR!r}, {pair.veth_a!r}, garp_count=1, garp_repeat_count=0)
            held = []
            for _ in range(5):
                await vip.async_acquire()
                held.append(await vip.async_held())
                await vip.async_release()
                held.append(await vip.async_held())
            print(json.dumps({{"held": held, "opened": vip.netlink_sockets_opened}}))
            await vip.async_close()
        asyncio.run(main())
        """)
    assert _run_in(pair.ns_a, script) == {"held": [True, False] * 5, "opened": 1}
    assert _addresses(pair) == ["10.214.0.1/24"]


def test_an_interface_created_again_is_found_again(pair: Pair) -> None:
    # The interface is deleted and made again under the same name (a driver reload, a VLAN
    # re-created): it gets a new index, and the open sockets must follow it.
    recreate = [
        ["ip", "link", "del", pair.veth_a],
        [
            "ip",
            "link",
            "add",
            pair.veth_a,
            "type",
            "veth",
            "peer",
            "name",
            pair.ns_b,
            "netns",
            pair.ns_b,
        ],
        ["ip", "addr", "add", "10.214.0.1/24", "dev", pair.veth_a],
        ["ip", "link", "set", pair.veth_a, "up"],
        ["ip", "-n", pair.ns_b, "link", "set", pair.ns_b, "up"],
    ]
    script = textwrap.dedent(f"""\
        import socket, subprocess
        async def main():
            vip = FloatingIP({CIDR!r}, {pair.veth_a!r}, garp_count=1, garp_repeat_count=0)
            before = socket.if_nametoindex({pair.veth_a!r})
            await vip.async_acquire()
            for _ in range(200):
                if vip.garps_sent:
                    break
                await asyncio.sleep(0.01)
            await vip.async_release()
            for argv in {recreate!r}:
                subprocess.run(argv, check=True)
            after = socket.if_nametoindex({pair.veth_a!r})
            await vip.async_acquire()
            for _ in range(200):
                if vip.garps_sent >= 2:
                    break
                await asyncio.sleep(0.01)
            print(json.dumps({{"moved": before != after, "held": await vip.async_held(),
                               "sent": vip.garps_sent}}))
        asyncio.run(main())
        """)
    assert _run_in(pair.ns_a, script) == {"moved": True, "held": True, "sent": 2}
    assert CIDR in _addresses(pair)


def test_a_lifetime_is_renewed_while_announcing_and_runs_out_after(pair: Pair) -> None:
    # A primary that dies (SIGKILL) or stops renewing (no lease) must not keep the address
    # for ever: the kernel drops it once its lifetime runs out.
    script = textwrap.dedent(f"""\
        import os, time
        async def main():
            vip = FloatingIP({CIDR!r}, {pair.veth_a!r}, garp_count=1, garp_repeat_count=0,
                             lifetime_s=2)
            await vip.async_acquire()
            await asyncio.sleep(3.0)  # past one lifetime: renewals keep it
            renewed = {{"held": await vip.async_held(), "renewals": vip.renewals}}
            vip.may_announce = lambda: False  # the lease is gone: no more renewals
            began = time.monotonic()
            while await vip.async_held() and time.monotonic() - began < 10:
                await asyncio.sleep(0.05)
            renewed["gone"] = not await vip.async_held()
            await vip.async_acquire()
            print(json.dumps(renewed), flush=True)
            os._exit(0)  # as SIGKILL: no release
        asyncio.run(main())
        """)
    report = _run_in(pair.ns_a, script)
    assert report["held"] is True
    assert isinstance(report["renewals"], int)
    assert report["renewals"] >= 1
    assert report["gone"] is True
    began = time.monotonic()
    while CIDR in _addresses(pair) and time.monotonic() - began < 10:
        time.sleep(0.05)
    assert CIDR not in _addresses(pair), "the address outlived its lifetime"


def _start_capture(pair: Pair, want: int) -> subprocess.Popen[str]:
    """An ARP capture on veth B, returned once it listens."""
    arguments = [pair.veth_b, str(want), "8"]
    capture = subprocess.Popen(
        ["ip", "netns", "exec", pair.ns_b, sys.executable, "-c", CAPTURE, *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert capture.stdout is not None
    ready, _, _ = select.select([capture.stdout], [], [], 10)
    if not ready or capture.stdout.readline().strip() != "ready":
        capture.kill()
        _, stderr = capture.communicate()
        pytest.fail(f"the ARP capture did not start: {stderr}")
    return capture


def _garps(capture: subprocess.Popen[str], pair: Pair) -> list[float]:
    """Times of the captured ARP frames about the VIP; each is checked to be a proper GARP."""
    stdout, stderr = capture.communicate(timeout=15)
    assert capture.returncode == 0, stderr
    times = []
    for at, hex_frame in json.loads(stdout):
        frame = bytes.fromhex(hex_frame)
        if frame[12:14] != b"\x08\x06" or frame[28:32] != bytes(map(int, VIP.split("."))):
            continue
        mac_a = bytes.fromhex(pair.mac_a.replace(":", ""))
        assert frame[:6] == b"\xff" * 6, "broadcast"
        assert frame[6:12] == mac_a, "Ethernet source is veth A"
        assert frame[14:22] == bytes.fromhex("0001080006040001"), "Ethernet/IPv4 ARP request"
        assert frame[22:28] == mac_a, "sender MAC is veth A's"
        assert frame[32:38] == bytes(6), "target MAC zero (RFC 5227)"
        assert frame[38:42] == frame[28:32], "target IP == sender IP == VIP"
        times.append(float(at))
    return times


def test_gratuitous_arps_reach_the_wire_in_two_bursts(pair: Pair) -> None:
    settings = {
        "garp_count": 3,
        "garp_interval_s": 0.05,
        "garp_repeat_delay_s": 0.3,
        "garp_repeat_count": 2,
    }
    capture = _start_capture(pair, want=5)
    try:
        report = _run_in(pair.ns_a, _acquire_script(pair.veth_a, 5, **settings))
    finally:
        times = _garps(capture, pair)
    assert report == {"sent": 5, "held": True}
    assert len(times) == 5, times
    first, repeat = times[:3], times[3:]
    # Lower bounds only: sleeps never end early, but a loaded machine may stretch them.
    assert all(later - earlier >= 0.04 for earlier, later in itertools.pairwise(first))
    assert repeat[0] - first[-1] >= 0.25, "the repeat burst waits garp_repeat_delay_s"


def test_the_neighbour_learns_the_new_mac(pair: Pair) -> None:
    # A client that still maps the VIP to the old primary's MAC, as after a failover. Linux
    # updates an existing entry from a gratuitous request even with arp_accept=0 (the default,
    # under which it would not create a new one), so no sysctl is needed.
    stale = ("lladdr", WRONG_MAC, "dev", pair.veth_b, "nud", "stale")
    _ip("-n", pair.ns_b, "neigh", "add", VIP, *stale)
    report = _run_in(pair.ns_a, _acquire_script(pair.veth_a, 2, garp_count=2, garp_interval_s=0.05))
    assert report["sent"] == 2
    deadline = time.monotonic() + 3
    while True:
        (entry,) = json.loads(_ip("-n", pair.ns_b, "-j", "neigh", "show", VIP, "dev", pair.veth_b))
        if entry.get("lladdr") == pair.mac_a or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert entry.get("lladdr") == pair.mac_a, entry


def test_reconcile_at_start_removes_a_leftover(pair: Pair) -> None:
    _ip("-n", pair.ns_a, "addr", "add", CIDR, "dev", pair.veth_a)
    script = textwrap.dedent(f"""\
        async def main():
            vip = FloatingIP({CIDR!r}, {pair.veth_a!r})
            first = await vip.async_reconcile_at_start()
            second = await vip.async_reconcile_at_start()
            print(json.dumps({{"removed": [first, second]}}))
        asyncio.run(main())
        """)
    assert _run_in(pair.ns_a, script) == {"removed": [True, False]}
    assert _addresses(pair) == ["10.214.0.1/24"]


def test_a_missing_interface_is_named_with_the_fix(pair: Pair) -> None:
    script = textwrap.dedent(f"""\
        async def main():
            vip = FloatingIP({CIDR!r}, "hvnope0")
            errors = []
            for attempt in (vip.async_acquire, vip.async_reconcile_at_start):
                try:
                    await attempt()
                except FloatingIPError as err:
                    errors.append(str(err))
            await vip.async_release()  # nothing to remove: not an error
            print(json.dumps({{"errors": errors, "held": vip.held()}}))
        asyncio.run(main())
        """)
    report = _run_in(pair.ns_a, script)
    assert report["held"] is False
    errors = report["errors"]
    assert isinstance(errors, list)
    assert len(errors) == 2
    for message in errors:
        assert "'hvnope0' does not exist in this network namespace" in message
        assert "ip link" in message


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
@pytest.mark.parametrize("capabilities", ["net_admin,net_raw", "net_admin"])
def test_missing_capabilities_name_the_fix_and_change_nothing(
    pair: Pair, capabilities: str
) -> None:
    # Root loses at exec what its bounding set lacks: without CAP_NET_RAW the packet socket is
    # refused, without CAP_NET_ADMIN only the netlink request.
    dropped = ",".join(f"-{name}" for name in capabilities.split(","))
    drop = ("setpriv", f"--bounding-set={dropped}", f"--inh-caps={dropped}")
    script = textwrap.dedent(f"""\
        async def main():
            vip = FloatingIP({CIDR!r}, {pair.veth_a!r})
            try:
                await vip.async_acquire()
            except FloatingIPError as err:
                print(json.dumps({{"error": str(err)}}))
        asyncio.run(main())
        """)
    report = _run_in(pair.ns_a, script, *drop)
    assert "CAP_NET_ADMIN + CAP_NET_RAW" in str(report["error"])
    assert repr(pair.veth_a) in str(report["error"])
    assert _addresses(pair) == ["10.214.0.1/24"]


@pytest.mark.parametrize(
    ("cidr", "complaint"),
    [
        ("192.168.1.50", "with a prefix length"),
        ("banana/24", "with a prefix length"),
        ("192.168.1.50/33", "with a prefix length"),
        ("fd00::5/64", "with a prefix length"),
        ("192.168.1.0/24", "network or broadcast"),
        ("192.168.1.255/24", "network or broadcast"),
        ("127.0.0.5/8", "cannot be a host address"),
    ],
)
def test_a_bad_address_is_refused_clearly(cidr: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        FloatingIP(cidr, "eth0")


@pytest.mark.parametrize(
    ("interface", "settings", "complaint"),
    [
        ("", {}, "interface name"),
        ("a-very-long-ifname0", {}, "interface name"),
        ("eth0", {"garp_count": 0}, "garp_count"),
        ("eth0", {"garp_repeat_count": -1}, "garp_repeat_count"),
        ("eth0", {"garp_interval_s": -0.1}, "garp_interval_s"),
    ],
)
def test_bad_settings_are_refused_clearly(
    interface: str, settings: dict[str, float], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        FloatingIP(CIDR, interface, **settings)  # type: ignore[arg-type]
