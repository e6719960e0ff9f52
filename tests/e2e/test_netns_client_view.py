"""What a client sees of the endpoint after each kind of fault: mDNS and the floating IP's owner.

Two nodes and a witness, each `ha-voice run` in its own namespace on a bridge, and a client in a
fourth running a passive python-zeroconf browser (tests/client_view.py). After a graceful
step-down, a SIGSTOP of the primary past the election timeout and its SIGCONT, and a SIGKILL,
the client's browser must never report the endpoint removed and must resolve it to the current
primary, and the floating IP must be answered for (ARP) by the current primary's MAC alone,
all within one failover time. A resumed old primary must not answer ARP for the address nor
send a gratuitous ARP for it: it removes the address before it could.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from ha_voice.cluster.discovery import ENDPOINT_SERVICE_TYPE, endpoint_name
from ha_voice.local_cluster import LocalCluster
from tests.client_view import (
    ArpCapture,
    MdnsView,
    arp_owners,
    mac_of,
    neighbour_mac,
    witness_pair,
)
from tests.integration.netns import HTTP_PROBE, Lan, NsProcess, created

pytestmark = pytest.mark.slow

VIP = "10.219.0.200"
CLIENT = 3
# One failover time, generously: detection and election take well under a second at the
# default timers; the rest is a loaded CI machine and the client's own polling.
FAILOVER_BOUND_S = 3.0
# The floating IP's kernel lifetime at the default stall_timeout_s (daemon.py).
VIP_LIFETIME_S = 3.0
_T = TypeVar("_T")

STEP_DOWN = """
import sys, httpx
r = httpx.post(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]}, timeout=5)
print(r.status_code, r.text)
"""


@dataclass
class Net:
    lan: Lan
    cluster: LocalCluster
    probe: NsProcess
    view: MdnsView

    def status(self, url: str) -> int | None:
        start = len(self.probe.stdout.lines)
        self.probe.send(url)
        line = self.probe.wait_for(lambda text: json.loads(text)["url"] == url, 5.0, start)
        status: int | None = json.loads(line)["status"]
        return status

    def primary(self, exclude: str | None = None) -> str:
        def single() -> str | None:
            found = [
                n.node_id
                for n in self.cluster.running()
                if n.node_id != "w" and self.status(f"{n.url}/cluster/primary") == 200
            ]
            return found[0] if len(found) == 1 and found[0] != exclude else None

        return self.wait(single, 30.0, "no single primary")

    def wait(self, what: Callable[[], _T | None], timeout_s: float, message: str) -> _T:
        deadline = time.monotonic() + timeout_s
        while True:
            found = what()
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{message}\n{self.logs()}")
            time.sleep(0.05)

    def index(self, node_id: str) -> int:
        return int(node_id[1:]) - 1

    def logs(self) -> str:
        return "\n".join(
            f"--- {n.node_id} ({_state(n.process)})\n{n.log_path.read_text()[-3000:]}"
            for n in self.cluster.nodes.values()
            if n.log_path.exists()
        )


def _state(process: subprocess.Popen[bytes] | None) -> str:
    """The process's state line from /proc (running, sleeping, stopped...), for a failure."""
    if process is None or process.poll() is not None:
        return "not running" if process is None else f"exited with {process.returncode}"
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line
    return "unknown"


@pytest.fixture
def net() -> Iterator[Net]:
    with created(Lan(4, subnet="10.219.0.0/24", prefix="hcv")) as lan:
        cluster = witness_pair(lan, VIP)
        view = MdnsView.start(lan[CLIENT], [ENDPOINT_SERVICE_TYPE])
        try:
            probe = lan[CLIENT].spawn([sys.executable, "-c", HTTP_PROBE])
            cluster.start()
            yield Net(lan, cluster, probe, view)
        finally:
            view.close()
            cluster.close()


def _client_sees(
    net: Net, primary: str, since: float, arp_bound_s: float = FAILOVER_BOUND_S
) -> None:
    """Within one failover time the client's view names `primary`, and nothing was removed;
    within `arp_bound_s` only `primary` answers ARP for the floating IP."""
    name = endpoint_name(net.cluster.cluster)
    address = net.lan.address(net.index(primary))
    net.view.wait_for(name, lambda e: e.node == primary and e.address == address, FAILOVER_BOUND_S)
    assert net.view.removals(name, since) == [], net.view.history(name, since)
    mac = mac_of(net.lan[net.index(primary)])
    client = net.lan[CLIENT]
    # The neighbour entry first: an ARP request's replies update it too, and while a killed
    # node's kernel still answers (until the address's lifetime ends) a probe could point it
    # back at the dead node, as any client's own request could.
    net.wait(
        lambda: neighbour_mac(client, VIP) == mac,
        arp_bound_s,
        f"the client's neighbour entry for {VIP} is {neighbour_mac(client, VIP)}, not {mac}",
    )
    net.wait(
        lambda: arp_owners(client, VIP) == [mac],
        arp_bound_s,
        f"ARP for {VIP} is not answered by {primary} ({mac}) alone: {arp_owners(client, VIP)}",
    )


def _post(net: Net, url: str) -> str:
    token = net.cluster.token or ""
    reply = net.lan[CLIENT].run([sys.executable, "-c", STEP_DOWN, url, token])
    return reply.stdout.strip()


def test_the_client_view_follows_the_primary_through_faults(net: Net) -> None:
    first = net.primary()
    # The client talks to the floating IP once, so it has a neighbour entry to keep right.
    net.wait(lambda: net.status(f"http://{VIP}:8888/cluster/primary") == 200, 10.0, "no VIP")
    _client_sees(net, first, 0.0)

    # Graceful: the old primary hands over and withdraws.
    since = time.monotonic()
    reply = _post(net, f"{net.cluster.nodes[first].url}/cluster/step-down")
    assert reply.startswith("202"), reply
    second = net.primary(exclude=first)
    _client_sees(net, second, since)

    # Paused past the election timeout, then resumed: its lease has run out; it must neither
    # lie in mDNS nor pull the floating IP back (its GARP repeat burst falls due while paused).
    since = time.monotonic()
    paused = net.cluster.nodes[second]
    paused.signal(signal.SIGSTOP)
    try:
        assert net.primary(exclude=second) == first
        capture = ArpCapture.start(net.lan[CLIENT])
        time.sleep(max(0.0, since + 5.5 - time.monotonic()))
    finally:
        paused.signal(signal.SIGCONT)
    resumed = time.monotonic()
    try:
        time.sleep(1.5)
        _client_sees(net, first, since)
        old_mac = mac_of(net.lan[net.index(second)])
        assert capture.announcements(VIP, old_mac, since=resumed) == []
    finally:
        capture.close()
    assert net.primary() == first

    # Crashed: no goodbye at all; the successor's announcements replace its answer. The dead
    # daemon's kernel answers ARP for the address until its lifetime runs out.
    since = time.monotonic()
    net.cluster.kill(first, signal.SIGKILL)
    third = net.primary(exclude=first)
    assert third == second
    _client_sees(net, third, since, arp_bound_s=VIP_LIFETIME_S + FAILOVER_BOUND_S)
