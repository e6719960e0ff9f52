"""What a client on the LAN sees of the cluster's endpoint: mDNS browsing and the ARP owner.

For checkers (tests/e2e, the chaos suite, benchmarks) that must prove the endpoint follows the
primary from the outside, with parts that are not ha-voice's:

    view = MdnsView.start(lan[CLIENT], [ENDPOINT_SERVICE_TYPE])   # a passive ServiceBrowser
    ...fault...
    view.wait_for(endpoint_name(cluster), lambda e: e.node == "n2", 3.0)  # or AssertionError
    assert view.removals(endpoint_name(cluster), since=t_fault) == []
    assert arp_owners(lan[CLIENT], VIP) == [mac_of(lan[1])]        # only n2 answers ARP
    view.close()

`MdnsView` runs python-zeroconf's `AsyncServiceBrowser` in a process inside the client's
namespace (real multicast there) and keeps the history of its events: `added`, `updated`,
`removed`, each with what the client's cache resolves the name to at that moment (address,
port, TXT `node` and `term`; None where the cache holds no SRV or address). Times are
`time.monotonic()`, which is the same clock in every namespace of this host, so they compare
with the moment a test sent its signal.

`MdnsView.cached_nodes(name)` asks the browser which answers its cache holds for `name` right
now (the `node=` of each live TXT record): a browser reports no event when one of two answers
leaves its cache, so this is how a test sees a stale answer flushed.

`ArpCapture` records every ARP frame a namespace's interface sees (a gratuitous ARP from a
node that should be silent, say). `arp_owners` asks the LAN who has an address (an ARP request
from the client namespace, RFC 826) and returns every MAC that answered within the timeout: two
MACs mean two nodes claim the floating IP. `neighbour_mac` reads the client's neighbour table,
what its next packet would use.

Invariants: nothing here changes the namespaces it looks into, except `arp_owners` sending one
request; every process started here dies with `close()` or with the namespace.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ha_voice.local_cluster import LocalCluster
from tests.integration.netns import Lan, Netns, NsProcess

__all__ = [
    "ArpCapture",
    "ArpFrame",
    "MdnsEvent",
    "MdnsView",
    "arp_owners",
    "mac_of",
    "neighbour_mac",
]

# Runs inside the client namespace: browse the types in argv, print one JSON line per event
# with what the cache resolves the name to (a short request if the cache lacks the records).
_WATCH = r"""
import asyncio, json, sys, time
from zeroconf import IPVersion, ServiceStateChange, current_time_millis
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

def _strings(text):
    at = 0
    while at < len(text):
        yield text[at + 1 : at + 1 + text[at]]
        at += 1 + text[at]

def emit(**fields):
    print(json.dumps(fields), flush=True)

async def describe(zc, type_, name, change, at):
    info = AsyncServiceInfo(type_, name)
    found = info.load_from_cache(zc)
    if not found and change != "removed":
        found = await info.async_request(zc, 1000)
    addresses = info.parsed_addresses(IPVersion.V4Only) if found else []
    txt = info.decoded_properties if found else {}
    emit(at=at, type=type_, name=name, change=change,
         address=addresses[0] if addresses else None, port=info.port if found else None,
         node=txt.get("node"), term=int(txt["term"]) if (txt.get("term") or "").isdigit() else None)

async def main():
    aiozc = AsyncZeroconf()
    tasks = set()
    def on_change(zeroconf, service_type, name, state_change):
        change = {ServiceStateChange.Added: "added", ServiceStateChange.Removed: "removed",
                  ServiceStateChange.Updated: "updated"}[state_change]
        at = time.monotonic()
        task = asyncio.ensure_future(describe(zeroconf, service_type, name, change, at))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    browsers = [AsyncServiceBrowser(aiozc.zeroconf, t, handlers=[on_change]) for t in sys.argv[1:]]
    emit(ready=True)
    while line := await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline):
        # "cache NAME": the node= of every live TXT record the cache holds for NAME.
        name = line.split()[1]
        now = current_time_millis()
        texts = [r.text for r in aiozc.zeroconf.cache.async_all_by_details(name, 16, 1)
                 if not r.is_expired(now)]
        nodes = sorted(e[5:].decode() for t in texts for e in _strings(t) if e[:5] == b"node=")
        emit(cache=name, nodes=nodes)
    for browser in browsers:
        await browser.async_cancel()
    await aiozc.async_close()

asyncio.run(main())
"""


@dataclass(frozen=True)
class MdnsEvent:
    """One browser event and what the client's cache resolved the name to just after it."""

    at: float  # time.monotonic() when the browser reported it
    service_type: str
    name: str
    change: str  # "added", "updated" or "removed"
    address: str | None
    port: int | None
    node: str | None  # TXT node=, the primary that answers
    term: int | None  # TXT term=


class MdnsView:
    """A passive mDNS browser in a namespace, and the history of what it reported."""

    def __init__(self, process: NsProcess) -> None:
        self._process = process
        self._read = 0
        self.events: list[MdnsEvent] = []
        self._cached: list[list[str]] = []

    @classmethod
    def start(cls, netns: Netns, service_types: Sequence[str], timeout_s: float = 10.0) -> MdnsView:
        """Start browsing `service_types` in `netns`; returns once the browser runs."""
        process = netns.spawn([sys.executable, "-c", _WATCH, *service_types])
        process.wait_for(lambda line: '"ready"' in line, timeout_s)
        view = cls(process)
        view._read = len(process.stdout.lines)
        return view

    def refresh(self) -> list[MdnsEvent]:
        """Take in the events reported since the last call; all events so far."""
        lines = self._process.stdout.drain()
        for line in lines[self._read :]:
            fields = json.loads(line)
            if "cache" in fields:
                self._cached.append(fields["nodes"])
                continue
            self.events.append(
                MdnsEvent(
                    fields["at"],
                    fields["type"],
                    fields["name"],
                    fields["change"],
                    fields["address"],
                    fields["port"],
                    fields["node"],
                    fields["term"],
                )
            )
        self._read = len(lines)
        return self.events

    def history(self, name: str, since: float = 0.0) -> list[MdnsEvent]:
        """The events about service `name` (full name, any case) at or after `since`."""
        key = name.lower()
        return [e for e in self.refresh() if e.name.lower() == key and e.at >= since]

    def removals(self, name: str, since: float = 0.0) -> list[MdnsEvent]:
        """The `removed` events of `name` at or after `since`."""
        return [e for e in self.history(name, since) if e.change == "removed"]

    def current(self, name: str) -> MdnsEvent | None:
        """The last event about `name` if it left the name resolved, else None."""
        events = self.history(name)
        if not events or events[-1].change == "removed" or events[-1].address is None:
            return None
        return events[-1]

    def wait_for(
        self, name: str, predicate: Callable[[MdnsEvent], bool], timeout_s: float
    ) -> MdnsEvent:
        """Wait until `current(name)` satisfies `predicate`; it, or AssertionError with the
        history of `name`."""
        deadline = time.monotonic() + timeout_s
        while True:
            event = self.current(name)
            if event is not None and predicate(event):
                return event
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"the client's mDNS view of {name} did not come right in {timeout_s} s; "
                    f"history: {self.history(name)}"
                )
            time.sleep(0.02)

    def cached_nodes(self, name: str, timeout_s: float = 5.0) -> list[str]:
        """The `node=` of every live TXT record of `name` in the client's cache now, sorted:
        one entry when the client can resolve only one answer, two when it holds both a
        primary's and another responder's and picks between them as it likes."""
        self.refresh()
        asked = len(self._cached)
        self._process.send(f"cache {name}")
        deadline = time.monotonic() + timeout_s
        while len(self._cached) == asked:
            if time.monotonic() >= deadline:
                raise AssertionError(f"the client's browser did not report its cache of {name}")
            time.sleep(0.01)
            self.refresh()
        return self._cached[asked]

    def close(self) -> None:
        """Stop the browser (it says goodbye to nothing: it only listened)."""
        self._process.end_input()


def witness_pair(lan: Lan, vip: str, *, keep_dir: bool = False) -> LocalCluster:
    """Two nodes sharing the floating IP `vip` (a /24 on eth0) and a witness, in namespaces 0-2
    of `lan`, with mDNS on (not started)."""
    flags = (f"--vip={vip}/24", "--vip-interface=eth0")
    return LocalCluster(
        2,
        witness=True,
        hosts=[lan.address(i) for i in range(3)],
        prefixes=[lan[i].exec_argv([]) for i in range(3)],
        mdns=True,
        node_flags={"n1": flags, "n2": flags},
        keep_dir=keep_dir,
    )


def mac_of(netns: Netns, interface: str = "eth0") -> str:
    """The MAC address of `interface` in `netns`, lower case with colons."""
    out = netns.run(["ip", "-j", "link", "show", "dev", interface]).stdout
    (link,) = json.loads(out)
    return str(link["address"]).lower()


def neighbour_mac(netns: Netns, address: str, interface: str = "eth0") -> str | None:
    """The MAC `netns`'s neighbour table maps `address` to, or None (no entry, or FAILED)."""
    out = netns.run(["ip", "-j", "neigh", "show", address, "dev", interface]).stdout
    entries = json.loads(out) if out.strip() else []
    for entry in entries:
        if entry.get("lladdr"):
            return str(entry["lladdr"]).lower()
    return None


# Runs inside a namespace: one ARP request for argv[2] from argv[1]'s address, then every
# reply's sender MAC for argv[3] seconds, as a JSON list.
_ARP_PROBE = r"""
import fcntl, json, socket, struct, sys, time
interface, target, wait_s = sys.argv[1], socket.inet_aton(sys.argv[2]), float(sys.argv[3])
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
sock.bind((interface, 0x0806))
mac = sock.getsockname()[4]
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
# SIOCGIFADDR: the interface's IPv4 address, the sender of the request.
own = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", interface.encode()))[20:24]
frame = (b"\xff" * 6 + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
         + mac + own + b"\x00" * 6 + target)
sock.send(frame)
sock.settimeout(0.02)
owners, deadline = [], time.monotonic() + wait_s
while time.monotonic() < deadline:
    try:
        reply = sock.recv(2048)
    except socket.timeout:
        continue
    # An ARP reply (opcode 2) whose sender IP is the target.
    if reply[20:22] == b"\x00\x02" and reply[28:32] == target:
        sender = reply[22:28].hex(":")
        if sender not in owners:
            owners.append(sender)
print(json.dumps(owners))
"""


def arp_owners(
    netns: Netns, address: str, interface: str = "eth0", wait_s: float = 0.3
) -> list[str]:
    """Every MAC that answers an ARP request for `address` sent from `netns` within `wait_s`:
    [] if nobody holds it, one MAC normally, two if two nodes claim it."""
    out = netns.run([sys.executable, "-c", _ARP_PROBE, interface, address, str(wait_s)]).stdout
    return [str(mac) for mac in json.loads(out)]


# Runs inside a namespace: prints "ready", then one JSON line per ARP frame on argv[1] until
# stdin closes: when, opcode, sender MAC and sender IP.
_ARP_CAPTURE = r"""
import json, select, socket, sys, time
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
sock.bind((sys.argv[1], 0x0806))
print(json.dumps({"ready": True}), flush=True)
while True:
    readable, _, _ = select.select([sock, sys.stdin], [], [])
    if sys.stdin in readable and not sys.stdin.readline():
        break
    if sock in readable:
        frame = sock.recv(2048)
        print(json.dumps({"at": time.monotonic(), "op": int.from_bytes(frame[20:22], "big"),
                          "mac": frame[22:28].hex(":"), "ip": socket.inet_ntoa(frame[28:32])}),
              flush=True)
"""


@dataclass(frozen=True)
class ArpFrame:
    """One ARP frame seen on the wire."""

    at: float  # time.monotonic() when captured
    op: int  # 1 request (a gratuitous ARP is a request for the sender's own IP), 2 reply
    mac: str  # sender hardware address
    ip: str  # sender protocol address


class ArpCapture:
    """Every ARP frame an interface in a namespace sees, from `start` to `close`."""

    def __init__(self, process: NsProcess) -> None:
        self._process = process

    @classmethod
    def start(cls, netns: Netns, interface: str = "eth0", timeout_s: float = 10.0) -> ArpCapture:
        """Start capturing; returns once the socket listens."""
        process = netns.spawn([sys.executable, "-c", _ARP_CAPTURE, interface])
        process.wait_for(lambda line: '"ready"' in line, timeout_s)
        return cls(process)

    def frames(self, since: float = 0.0) -> list[ArpFrame]:
        """The frames captured so far, at or after `since`."""
        found = []
        for line in self._process.stdout.drain():
            fields = json.loads(line)
            if "at" in fields and fields["at"] >= since:
                found.append(ArpFrame(fields["at"], fields["op"], fields["mac"], fields["ip"]))
        return found

    def announcements(self, address: str, mac: str, since: float = 0.0) -> list[ArpFrame]:
        """The gratuitous ARPs (and replies) claiming `address` for `mac` since `since`."""
        return [f for f in self.frames(since) if f.ip == address and f.mac == mac.lower()]

    def close(self) -> None:
        self._process.end_input()
