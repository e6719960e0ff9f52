"""Three nodes, each in its own network namespace on a bridge, and a client in a fourth.

Real mDNS discovery with no static addresses, the virtual endpoint resolved from the client
namespace with `dig` (not zeroconf), the floating IP moving on failover (seen with `ip -n`), and
a partition of the primary: the majority elects, the isolated node steps down and lets go of
the floating IP.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ha_voice.local_cluster import LocalCluster
from tests.integration.dig import Dig
from tests.integration.netns import HTTP_PROBE, Lan, NetnsUnavailable, NsProcess

VIP = "10.215.0.200"
CLIENT = 3


@dataclass
class Net:
    lan: Lan
    cluster: LocalCluster
    probe: NsProcess
    dig: Dig

    def get(self, node: str, path: str) -> tuple[int | None, Any]:
        """GET from the client namespace; (status, parsed JSON or None)."""
        return self.fetch(f"{self.cluster.nodes[node].url}{path}")

    def fetch(self, url: str) -> tuple[int | None, Any]:
        """GET `url` from the client namespace; (status, parsed JSON or None)."""
        start = len(self.probe.stdout.lines)
        self.probe.send(url)
        line = self.probe.wait_for(lambda text: json.loads(text)["url"] == url, 5.0, start)
        reply = json.loads(line)
        body = reply.get("body")
        try:
            return reply["status"], json.loads(body) if body else None
        except json.JSONDecodeError:
            return reply["status"], body

    def primaries(self) -> list[str]:
        return [
            n.node_id
            for n in self.cluster.running()
            if self.get(n.node_id, "/cluster/primary")[0] == 200
        ]

    def wait(self, what: Callable[[], Any], timeout_s: float, message: str) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = what()
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError(f"{message}\n{self.logs()}")

    def one_primary(self, timeout_s: float = 30.0, exclude: str | None = None) -> str:
        def single() -> str | None:
            found = [p for p in self.primaries() if p != exclude]
            return found[0] if len(found) == 1 else None

        primary: str = self.wait(single, timeout_s, "no single primary")
        return primary

    def vip_on(self, index: int) -> bool:
        out = self.lan[index].run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
        return f" {VIP}/" in out

    def endpoint(self) -> tuple[str, int, str, dict[str, str]] | None:
        """(SRV target, port, address, TXT) of the endpoint as dig sees it, or None."""
        try:
            return self.dig.endpoint(self.cluster.cluster)
        except AssertionError:
            return None

    def logs(self) -> str:
        return "\n".join(
            f"--- {n.node_id}\n{n.log_path.read_text()[-2500:]}"
            for n in self.cluster.nodes.values()
            if n.log_path.exists()
        )


def _index(node_id: str) -> int:
    return int(node_id[1:]) - 1


@pytest.fixture
def net() -> Iterator[Net]:
    lan = Lan(4, subnet="10.215.0.0/24", prefix="hve")
    try:
        lan.create()
    except NetnsUnavailable as exc:
        pytest.skip(f"network namespaces unavailable: {exc}")
    cluster = LocalCluster(
        3,
        hosts=[lan.address(i) for i in range(3)],
        prefixes=[lan[i].exec_argv([]) for i in range(3)],
        mdns=True,
        static_peers=False,
        extra_flags=(f"--vip={VIP}/24", "--vip-interface=eth0"),
    )
    try:
        probe = lan[CLIENT].spawn([sys.executable, "-c", HTTP_PROBE])
        cluster.start()
        yield Net(lan, cluster, probe, Dig(lan, CLIENT))
    finally:
        cluster.close()
        lan.close()


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig: apt-get install dnsutils")
def test_discovery_endpoint_and_floating_ip_follow_the_primary(net: Net) -> None:
    primary = net.one_primary()
    # Every node found the others by mDNS alone: the primary hears both backups.
    view = net.wait(
        lambda: (
            (v := net.get(primary, "/cluster")[1])
            and sum(m["role"] == "backup" for m in v["members"]) == 2
            and v
        ),
        10.0,
        "the primary did not hear both backups",
    )
    assert {m["address"].split(":")[0] for m in view["members"] if not m["self"]} == {
        net.lan.address(i) for i in range(3) if i != _index(primary)
    }
    # The endpoint resolves, by a resolver that is not ours, to the primary.
    endpoint = net.wait(
        lambda: (e := net.endpoint()) and e[3].get("node") == primary and e, 10.0, "no endpoint"
    )
    _, port, address, txt = endpoint
    assert (port, address) == (8888, net.lan.address(_index(primary)))
    assert txt["term"] == str(view["term"])
    net.wait(lambda: net.vip_on(_index(primary)), 10.0, "the primary never took the VIP")
    assert [i for i in range(3) if net.vip_on(i)] == [_index(primary)]
    # Clients of the floating IP reach the primary's API, though its cluster socket is bound to
    # the node's own address (listen_address): the API binds api_listen_address, every address.
    at_vip = f"http://{VIP}:8888/cluster/primary"
    assert net.fetch(at_vip)[0] == 200

    net.cluster.kill(primary, signal.SIGKILL)
    new = net.one_primary(exclude=primary)
    assert new != primary
    net.wait(lambda: net.vip_on(_index(new)), 10.0, "the VIP did not move")
    net.wait(lambda: net.fetch(at_vip)[0] == 200, 10.0, "the VIP does not reach the new primary")
    net.wait(lambda: (e := net.endpoint()) and e[3].get("node") == new, 10.0, "the endpoint stayed")

    # The killed node comes back, finds the VIP on itself while not primary, and drops it.
    net.cluster.nodes[primary].start()
    net.wait(lambda: not net.vip_on(_index(primary)), 15.0, "the returning node kept the VIP")
    assert net.one_primary() == new


def test_a_partitioned_primary_steps_down_and_the_majority_elects(net: Net) -> None:
    primary = net.one_primary()
    net.wait(lambda: net.vip_on(_index(primary)), 10.0, "the primary never took the VIP")
    assert net.lan.bridge is not None
    net.lan.bridge.ip("link", "set", net.lan.port(_index(primary)), "down")
    new = net.one_primary(exclude=primary)
    assert new != primary
    old_ns = net.lan[_index(primary)]
    url = f"{net.cluster.nodes[primary].url}/cluster"

    def stepped_down() -> bool:
        cmd = [sys.executable, "-c", f"import httpx; print(httpx.get('{url}').text)"]
        result = old_ns.run(cmd, check=False)
        return result.returncode == 0 and json.loads(result.stdout)["role"] != "primary"

    net.wait(stepped_down, 10.0, "the isolated primary did not step down")
    net.wait(lambda: not net.vip_on(_index(primary)), 10.0, "the isolated node kept the VIP")
    net.wait(lambda: net.vip_on(_index(new)), 10.0, "the new primary has no VIP")
    net.lan.bridge.ip("link", "set", net.lan.port(_index(primary)), "up")
    assert net.one_primary() == new
