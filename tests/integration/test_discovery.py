"""Discovery and the virtual endpoint over real multicast, in network namespaces.

Each node runs `Discovery` in its own namespace on a bridged LAN (`netns.Lan`), driven by
NODE_DRIVER through stdin and reporting JSON lines on stdout. The endpoint is resolved twice:
with `async_resolve_endpoint` (python-zeroconf) and with dig, an independent DNS
implementation. dig 9.18 connects its UDP socket to the server, so it drops the answers to a
multicast query (they come from the responder's own address); MDNS_RELAY therefore copies
dig's query, byte for byte, to 224.0.0.251:5353 from an ephemeral port (a legacy unicast
query, RFC 6762 §6.7) and hands the first answer back. dig builds the query and parses the
answer; the relay reads neither.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ha_voice.cluster.discovery import ENDPOINT_TTL_S
from tests.integration.dig import Dig
from tests.integration.netns import Lan, NsProcess, created

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = "t1"
# Registration probes for ~1.5 s (RFC 6762 §8.1); the rest is interpreter start-up and slack.
SEEN_WITHIN_S = 8.0

NODE_DRIVER = r"""
import asyncio, dataclasses, json, sys
from ha_voice.cluster.discovery import Discovery
from ha_voice.errors import ConfigError

def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)

async def main(config):
    config["capabilities"] = tuple(config["capabilities"])
    discovery = Discovery(**config)
    try:
        await discovery.async_start(
            lambda peer: emit("peer", **dataclasses.asdict(peer)),
            lambda node_id: emit("gone", node_id=node_id),
        )
    except ConfigError as err:
        emit("refused", message=str(err))
        await discovery.async_close()
        return
    emit("started")
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while command := (await reader.readline()).decode().split():
        if command[0] == "publish":
            await discovery.async_publish_endpoint(int(command[1]))
            emit("published", term=int(command[1]))
        elif command[0] == "withdraw":
            await discovery.async_withdraw_endpoint()
            emit("withdrawn")
        elif command[0] == "stats":
            emit("stats", malformed=discovery.malformed)
        elif command[0] == "quit":
            break
    await discovery.async_close()
    emit("closed")

asyncio.run(main(json.loads(sys.argv[1])))
"""

# A node service of cluster t1 whose TXT breaks every rule a peer record has.
BAD_NODE = r"""
import asyncio, sys
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

async def main(address):
    aiozc = AsyncZeroconf(interfaces=[address])
    txt = {"cluster": "t1", "node": "bad", "priority": "high", "api_port": "x"}
    info = AsyncServiceInfo(
        "_ha-voice-node._udp.local.", "bad@t1._ha-voice-node._udp.local.", port=7999,
        properties=txt, server="bad.t1.ha-voice.local.", parsed_addresses=[address],
    )
    await aiozc.async_register_service(info)
    print("registered", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await aiozc.async_close()

asyncio.run(main(sys.argv[1]))
"""

RESOLVER = r"""
import asyncio, json, sys
from ha_voice.cluster.discovery import async_resolve_endpoint

found = asyncio.run(async_resolve_endpoint(sys.argv[1], float(sys.argv[2]), [sys.argv[3]]))
print(json.dumps(found))
"""

# A long-lived listener: prints [host, port, term] from its cache whenever that changes, so a
# test sees what a client that resolved the endpoint earlier believes now.
WATCHER = r"""
import asyncio, json, sys
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

async def main(name, address):
    aiozc = AsyncZeroconf(interfaces=[address])
    await AsyncServiceInfo("_ha-voice._tcp.local.", name).async_request(aiozc.zeroconf, 3000)
    last = None
    while True:
        info = AsyncServiceInfo("_ha-voice._tcp.local.", name)
        if info.load_from_cache(aiozc.zeroconf):
            now = [info.parsed_addresses(IPVersion.V4Only)[0], info.port,
                   info.decoded_properties.get("term")]
        else:
            now = [None, None, None]
        if now != last:
            print(json.dumps(now), flush=True)
            last = now
        await asyncio.sleep(0.05)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.fixture
def lan() -> Iterator[Lan]:
    with created(Lan(3, prefix="hvd")) as network:
        yield network


@pytest.fixture
def dig_available() -> None:
    if shutil.which("dig") is None:
        pytest.skip("dig is not installed (apt-get install dnsutils)")


def _config(lan: Lan, index: int, node_id: str, cluster: str = CLUSTER) -> dict[str, Any]:
    return {
        "cluster": cluster,
        "node_id": node_id,
        "address": lan.address(index),
        "cluster_port": 7100 + index,
        "api_port": 8800 + index,
        "priority": 150 - index,
        "version": "0.1.0",
        "capabilities": ["stt", "robot"] if index == 0 else ["stt"],
    }


def _expected(lan: Lan, index: int) -> dict[str, Any]:
    config = _config(lan, index, ["a-id", "b-id"][index])
    return {
        "node_id": config["node_id"],
        "cluster_port": config["cluster_port"],
        "api_port": config["api_port"],
        "priority": config["priority"],
        "version": config["version"],
        "capabilities": config["capabilities"],
        "cluster": CLUSTER,
    }


def _start(lan: Lan, index: int, node_id: str, cluster: str = CLUSTER) -> NsProcess:
    config = json.dumps(_config(lan, index, node_id, cluster))
    return lan[index].spawn([sys.executable, "-c", NODE_DRIVER, config], cwd=ROOT)


def _event(kind: str, **fields: Any) -> Callable[[str], bool]:
    def matches(line: str) -> bool:
        try:
            event = json.loads(line)
        except ValueError:
            return False
        return bool(event["event"] == kind and all(event.get(k) == v for k, v in fields.items()))

    return matches


def _events(node: NsProcess, kind: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in node.stdout.drain() if _event(kind)(line)]


def _command(node: NsProcess, command: str, reply: str, **fields: Any) -> None:
    node.send(command)
    node.wait_for(_event(reply, **fields), timeout_s=5.0)


def _malformed(node: NsProcess) -> int:
    start = len(node.stdout.drain())
    node.send("stats")
    return int(json.loads(node.wait_for(_event("stats"), 5.0, start))["malformed"])


def _resolve(lan: Lan, index: int, timeout_s: float, cluster: str = CLUSTER) -> list[Any] | None:
    argv = [sys.executable, "-c", RESOLVER, cluster, str(timeout_s), lan.address(index)]
    result = lan[index].run(argv, timeout_s=timeout_s + 10, check=False)
    assert result.returncode == 0, result.stderr
    found: list[Any] | None = json.loads(result.stdout)
    return found


def test_nodes_of_one_cluster_find_each_other_and_nobody_else(lan: Lan) -> None:
    other = _start(lan, 2, "c-id", cluster="other")
    bad = lan[2].spawn([sys.executable, "-c", BAD_NODE, lan.address(2)], cwd=ROOT)
    other.wait_for(_event("started"), SEEN_WITHIN_S)
    bad.wait_for("registered".__eq__, SEEN_WITHIN_S)

    a, b = _start(lan, 0, "a-id"), _start(lan, 1, "b-id")
    seen_by_a = json.loads(a.wait_for(_event("peer", node_id="b-id"), SEEN_WITHIN_S))
    seen_by_b = json.loads(b.wait_for(_event("peer", node_id="a-id"), SEEN_WITHIN_S))

    assert seen_by_a == {"event": "peer", "host": lan.address(1), **_expected(lan, 1)}
    assert seen_by_b == {"event": "peer", "host": lan.address(0), **_expected(lan, 0)}
    # The malformed node registered before a and b started: each resolved and dropped it first.
    assert _malformed(a) >= 1
    assert _malformed(b) >= 1
    assert [peer["node_id"] for peer in _events(a, "peer")] == ["b-id"]
    assert [peer["node_id"] for peer in _events(b, "peer")] == ["a-id"]
    assert _events(other, "peer") == []

    _command(b, "quit", "closed")
    a.wait_for(_event("gone", node_id="b-id"), timeout_s=5.0)


def test_two_clusters_with_the_same_node_ids_share_a_network() -> None:
    """Two robots' clusters, both of a-id and b-id, on one LAN: the second cluster's a-id was
    refused (the node record was not scoped by cluster). Now each node registers, each finds
    only its own cluster's peer, and each cluster's endpoint resolves to its own primary."""
    with Lan(5, subnet="10.214.0.0/24", prefix="hvc") as network:
        nodes = {
            (cluster, node_id): _start(network, index, node_id, cluster)
            for index, (cluster, node_id) in enumerate(
                [("t1", "a-id"), ("t1", "b-id"), ("t2", "a-id"), ("t2", "b-id")]
            )
        }
        for (cluster, node_id), node in nodes.items():
            other = "b-id" if node_id == "a-id" else "a-id"
            found = json.loads(node.wait_for(_event("peer", node_id=other), SEEN_WITHIN_S))
            assert found["cluster"] == cluster
            assert _events(node, "refused") == []
        _command(nodes["t1", "a-id"], "publish 3", "published", term=3)
        _command(nodes["t2", "a-id"], "publish 7", "published", term=7)
        assert _resolve(network, 4, 3.0, "t1") == [network.address(0), 8800, _txt("a-id", 3)]
        t2 = {**_txt("a-id", 7), "cluster": "t2"}
        assert _resolve(network, 4, 3.0, "t2") == [network.address(2), 8802, t2]
        for (cluster, node_id), node in nodes.items():
            other = "b-id" if node_id == "a-id" else "a-id"
            assert _malformed(node) == 0  # the other cluster's records were never resolved
            peers = [(peer["node_id"], peer["cluster"]) for peer in _events(node, "peer")]
            assert peers == [(other, cluster)]


def test_a_second_node_with_the_same_id_is_refused(lan: Lan) -> None:
    observer, first = _start(lan, 2, "c-id"), _start(lan, 0, "a-id")
    first.wait_for(_event("started"), SEEN_WITHIN_S)
    observer.wait_for(_event("peer", node_id="a-id"), SEEN_WITHIN_S)

    second = _start(lan, 1, "a-id")
    refused = json.loads(second.wait_for(_event("refused"), SEEN_WITHIN_S))
    assert (
        f"two processes claim node_id a-id in cluster {CLUSTER}: {lan.address(0)}:7100 "
        f"(registered first) and {lan.address(1)}:7101 (this one, refused)"
    ) in refused["message"]
    assert second.wait(timeout_s=5.0) == 0
    # The refused node sent no goodbye for the name it never owned, and never answered for it.
    _command(observer, "stats", "stats")  # a round trip: what reached the observer is handled
    assert [peer["host"] for peer in _events(observer, "peer")] == [lan.address(0)]
    assert _events(observer, "gone") == []


@pytest.mark.usefixtures("dig_available")
def test_the_endpoint_resolves_with_dig_and_zeroconf(lan: Lan) -> None:
    a = _start(lan, 0, "a-id")
    a.wait_for(_event("started"), SEEN_WITHIN_S)
    _command(a, "publish 3", "published", term=3)

    target, port, address, txt = Dig(lan, 2).endpoint(CLUSTER)
    assert (target, port, address) == ("a-id.t1.ha-voice.local.", 8800, lan.address(0))
    assert txt == {"cluster": CLUSTER, "node": "a-id", "term": "3", "version": "0.1.0"}
    assert _resolve(lan, 2, timeout_s=3.0) == [lan.address(0), 8800, txt]


@pytest.mark.usefixtures("dig_available")
def test_the_endpoint_moves_to_the_new_primary(lan: Lan) -> None:
    a, b = _start(lan, 0, "a-id"), _start(lan, 1, "b-id")
    a.wait_for(_event("started"), SEEN_WITHIN_S)
    b.wait_for(_event("started"), SEEN_WITHIN_S)
    _command(a, "publish 3", "published", term=3)
    assert _resolve(lan, 2, timeout_s=3.0) == [lan.address(0), 8800, _txt("a-id", 3)]
    watcher = _watch(lan, 2)
    watcher.wait_for(_shows(lan.address(0), 8800, "3"), timeout_s=5.0)

    _command(a, "withdraw", "withdrawn")
    # A goodbye makes listeners drop the record within a second (RFC 6762 §10.1).
    watcher.wait_for(_shows(None, None, None), timeout_s=3.0)
    _command(b, "publish 4", "published", term=4)
    watcher.wait_for(_shows(lan.address(1), 8801, "4"), timeout_s=3.0)
    assert _resolve(lan, 2, timeout_s=3.0) == [lan.address(1), 8801, _txt("b-id", 4)]
    dig = Dig(lan, 2)
    assert dig.endpoint(CLUSTER) == (
        "b-id.t1.ha-voice.local.",
        8801,
        lan.address(1),
        _txt("b-id", 4),
    )

    _command(b, "publish 5", "published", term=5)
    watcher.wait_for(_shows(lan.address(1), 8801, "5"), timeout_s=3.0)
    assert dig.endpoint(CLUSTER)[3] == _txt("b-id", 5)


def test_a_killed_primarys_endpoint_is_replaced_at_once(lan: Lan) -> None:
    a, b = _start(lan, 0, "a-id"), _start(lan, 1, "b-id")
    a.wait_for(_event("started"), SEEN_WITHIN_S)
    b.wait_for(_event("started"), SEEN_WITHIN_S)
    _command(a, "publish 3", "published", term=3)
    watcher = _watch(lan, 2)
    watcher.wait_for(_shows(lan.address(0), 8800, "3"), timeout_s=5.0)

    a.process.kill()  # SIGKILL: no goodbye, a's answer stays in every cache
    a.wait(timeout_s=5.0)
    _command(b, "publish 4", "published", term=4)
    # The announcement's cache-flush bit (RFC 6762 §10.2) replaces a's answer within about a
    # second: well before a's records could have expired.
    watcher.wait_for(_shows(lan.address(1), 8801, "4"), timeout_s=ENDPOINT_TTL_S / 5)
    assert _resolve(lan, 2, timeout_s=3.0) == [lan.address(1), 8801, _txt("b-id", 4)]


def _watch(lan: Lan, index: int) -> NsProcess:
    argv = [sys.executable, "-c", WATCHER, f"{CLUSTER}._ha-voice._tcp.local.", lan.address(index)]
    return lan[index].spawn(argv)


def _shows(host: str | None, port: int | None, term: str | None) -> Callable[[str], bool]:
    return lambda line: bool(json.loads(line) == [host, port, term])


def _txt(node_id: str, term: int) -> dict[str, str]:
    return {"cluster": CLUSTER, "node": node_id, "term": str(term), "version": "0.1.0"}


def _start_wildcard(lan: Lan, index: int, node_id: str) -> NsProcess:
    """A node bound to 0.0.0.0, as by default: it advertises what its interfaces hold."""
    config = json.dumps({**_config(lan, index, node_id), "address": "0.0.0.0"})
    return lan[index].spawn([sys.executable, "-c", NODE_DRIVER, config], cwd=ROOT)


def _resolved_host(lan: Lan, index: int, wanted: str, timeout_s: float) -> str | None:
    """Resolve the endpoint from node `index` until it names `wanted`; the last host seen."""
    deadline = time.monotonic() + timeout_s
    host = None
    while time.monotonic() < deadline:
        found = _resolve(lan, index, timeout_s=2.0)
        host = None if found is None else found[0]
        if host == wanted:
            break
    return host


def test_a_node_on_two_networks_is_reachable_on_each() -> None:
    """A Jetson on the robot's network (no gateway) and on Wi-Fi (default route, multicast
    route): it advertised its Wi-Fi address on both, and clients on the robot's network gave
    up ("Network is unreachable"). Now each network resolves it to its own address there."""
    with (
        Lan(2, subnet="10.217.0.0/24", prefix="hvr") as robot,
        Lan(2, subnet="10.218.0.0/24", prefix="hvw") as wifi,
    ):
        jetson, wifi_address = robot[0], str(wifi.network.network_address + 10)
        assert wifi.bridge is not None
        wifi.bridge.ip(
            "link", "add", "pj", "type", "veth", "peer", "name", "eth1", "netns", jetson.name
        )
        wifi.bridge.ip("link", "set", "pj", "master", "br0", "up")
        jetson.ip("addr", "add", f"{wifi_address}/24", "dev", "eth1")
        jetson.ip("link", "set", "eth1", "up")
        jetson.ip("route", "add", "default", "dev", "eth1")
        jetson.ip("route", "replace", "224.0.0.0/4", "dev", "eth1")
        node = _start_wildcard(robot, 0, "a-id")
        node.wait_for(_event("started"), SEEN_WITHIN_S)
        _command(node, "publish 3", "published", term=3)
        assert _resolved_host(robot, 1, robot.address(0), 10.0) == robot.address(0)
        assert _resolved_host(wifi, 1, wifi_address, 10.0) == wifi_address


def test_a_new_address_is_advertised_while_running(lan: Lan) -> None:
    """A new DHCP lease: the old address was advertised until the daemon restarted."""
    node = _start_wildcard(lan, 0, "a-id")
    node.wait_for(_event("started"), SEEN_WITHIN_S)
    _command(node, "publish 3", "published", term=3)
    assert _resolved_host(lan, 2, lan.address(0), 10.0) == lan.address(0)
    leased = str(lan.network.network_address + 50)
    lan[0].ip("addr", "del", f"{lan.address(0)}/{lan.network.prefixlen}", "dev", "eth0")
    lan[0].ip("addr", "add", f"{leased}/{lan.network.prefixlen}", "dev", "eth0")
    lan[0].ip("route", "replace", "224.0.0.0/4", "dev", "eth0")
    assert _resolved_host(lan, 2, leased, 20.0) == leased
