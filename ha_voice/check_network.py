"""`ha-voice check` over the network: the node running here, the peers heard, the timers
against the measured round trip, and the robot.

Invariants:
- Every probe is bounded: one mDNS browse of `mdns_wait_s`, HTTP requests of `http_timeout_s`
  each to a bounded number of nodes, and the robot probed in a child process killed at
  `robot_timeout_s` (the Go2 SDK's calls block in C; a thread could not be stopped).
- The round trip is the primary's own measurement (`ha_voice_heartbeat_rtt_seconds`, the one the
  daemon warns on) when a primary answers; else an HTTP round trip from here, said as such.
- The robot is probed as the daemon's `_watch_robot` does: the backend `make_robot` gives,
  `connect()`, then `reachable()`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import httpx

from ha_voice import clock
from ha_voice.check import Finding
from ha_voice.cluster.timers import RTT_HEADROOM, round_trip_problem
from ha_voice.interfaces import WILDCARD, local_ipv4
from ha_voice.robot.go2 import INSTALL_HINT

if TYPE_CHECKING:
    import ssl

    from ha_voice.check import CheckOptions, Level
    from ha_voice.cluster.discovery import PeerRecord
    from ha_voice.config import Config

__all__ = ["network_findings", "probe_robot_main"]

_RTT_METRIC: Final = "ha_voice_heartbeat_rtt_seconds"
_HTTP_RTT_TRIES: Final = 3  # the least of a few: queueing only ever adds
_MAX_NODES_ASKED: Final = 9  # a cluster has a handful of members; mDNS may bring strangers
_ROBOT_PROBE: Final = "from ha_voice.check_network import probe_robot_main; probe_robot_main()"
# A Go2 publishes its state at hundreds of Hz: a second after connecting, one has come or none.
_GO2_FIRST_SAMPLE_S: Final = 1.0
_SYS_NET: Final = Path("/sys/class/net")
_ROBOT_DOCS: Final = "docs/jetson-install.md, 'The network to the robot'"


@dataclass
class _Cluster:
    """What the nodes that answered said."""

    local: dict[str, Any] | None = None  # this host's node: /health and /cluster
    local_error: str = ""
    primary_url: str | None = None
    heard: set[str] = field(default_factory=set)  # members some answering node hears


def network_findings(config: Config, options: CheckOptions) -> list[Finding]:
    """The running node, the peers, the timers against the round trip, and (for a node) the
    robot."""
    from ha_voice.client import ssl_context  # noqa: PLC0415
    from ha_voice.diagnose import find_records  # noqa: PLC0415

    verify = ssl_context(config.tls_ca_file)
    records = find_records(config.cluster, options.mdns_wait_s) if config.mdns else []
    records = [r for r in records if r.node_id != config.node_id]
    asked = _ask_nodes(config, records, verify, options.http_timeout_s)
    findings = [
        _node_finding(config, asked),
        _peers_finding(config, records, asked),
        _timers_finding(config, records, asked, verify, options.http_timeout_s),
    ]
    if options.role == "node":
        findings.append(_robot_finding(config, asked, options.robot_timeout_s))
    return findings


# --- the nodes -------------------------------------------------------------------------------


def _local_url(config: Config) -> str:
    scheme = "https" if config.tls_cert_file is not None else "http"
    host = "127.0.0.1" if config.api_listen_address == WILDCARD else config.api_listen_address
    return f"{scheme}://{host}:{config.port}"


def _ask_nodes(
    config: Config, records: Sequence[PeerRecord], verify: ssl.SSLContext | bool, timeout_s: float
) -> _Cluster:
    """Ask this host's node, then the nodes mDNS found, then the primary one of them names
    (a backup hears only the primary; the primary hears every member)."""
    asked = _Cluster()
    scheme = "https" if config.tls_cert_file is not None else "http"
    local = _local_url(config)
    urls = [local, *(f"{scheme}://{r.host}:{r.api_port}" for r in records)][:_MAX_NODES_ASKED]
    for url in urls:
        _ask(asked, url, url == local, verify, timeout_s)
    if asked.primary_url is not None and asked.primary_url not in urls:
        _ask(asked, asked.primary_url, False, verify, timeout_s)
    return asked


def _ask(
    asked: _Cluster, url: str, local: bool, verify: ssl.SSLContext | bool, timeout_s: float
) -> None:
    try:
        health = _get_json(f"{url}/health", verify, timeout_s)
        view = _get_json(f"{url}/cluster", verify, timeout_s)
    except (httpx.HTTPError, ValueError) as exc:
        if local:
            asked.local_error = _one_line(exc)
        return
    if local:
        asked.local = {"health": health, "cluster": view}
    asked.heard |= _heard(view)
    leads = view.get("leader") is not None and view.get("leader") == view.get("node")
    asked.primary_url = asked.primary_url or (url if leads else _primary_api(view))


def _get_json(url: str, verify: ssl.SSLContext | bool, timeout_s: float) -> dict[str, Any]:
    """The JSON object a node answers `url` with: 200, or 503 (a failing node's /health);
    ValueError for anything else, such as another server on the port."""
    response = httpx.get(url, timeout=timeout_s, verify=verify)
    body = response.json()
    if response.status_code not in (200, 503) or not isinstance(body, dict):
        raise ValueError(f"{url} answered {response.status_code}: not an ha-voice node")
    return body


def _heard(view: Mapping[str, Any]) -> set[str]:
    """Members the answering node hears now (a role it knows), itself included."""
    members = [m for m in view.get("members", []) if isinstance(m, dict)]
    return {
        str(m.get("node"))
        for m in members
        if m.get("self") or m.get("role") not in (None, "unknown", "unreachable")
    }


def _primary_api(view: Mapping[str, Any]) -> str | None:
    leader = view.get("leader")
    members = [m for m in view.get("members", []) if isinstance(m, dict)]
    urls = [m.get("api") for m in members if leader is not None and m.get("node") == leader]
    return str(urls[0]) if urls and urls[0] else None


def _node_finding(config: Config, asked: _Cluster) -> Finding:
    url = _local_url(config)
    if asked.local is None:
        return Finding(
            "node",
            "warn",
            f"no ha-voice node answers at {url} ({asked.local_error})",
            "start it (sudo systemctl start ha-voice); before a start (ExecStartPre=) this is "
            "expected",
        )
    health, view = asked.local["health"], asked.local["cluster"]
    node = health.get("node")
    said = (
        f"{node} answers at {url}: {view.get('role')} in term {view.get('term')}, primary "
        f"{view.get('leader') or 'none'}, status {health.get('status')}"
    )
    if node != config.node_id:
        return Finding(
            "node",
            "warn",
            f"{said}; but this configuration's node_id is {config.node_id!r}",
            "check the port and node_id: another node's configuration answers here",
        )
    return _node_status(said, health)


def _node_status(said: str, health: Mapping[str, Any]) -> Finding:
    status = health.get("status")
    speech = health.get("speech") or {}
    if isinstance(speech, dict) and speech.get("configured"):
        loaded = (
            f"{speech.get('model')} on {speech.get('device')}, {speech.get('compute_type')}"
            if speech.get("ready")
            else f"not ready: {speech.get('reason')}"
        )
        said += f"; speech {loaded}"
    if status == "ok":
        return Finding("node", "ok", said)
    reason = health.get("fault_reason") or "no reason given"
    level: Level = "fail" if status == "failing" else "warn"
    return Finding("node", level, f"{said}: {reason}", "see docs/operations.md for the reason")


# --- the peers -------------------------------------------------------------------------------


def _expected_peers(config: Config) -> set[str]:
    expected = {spec.node_id for spec in config.peer_specs}
    witness = config.witness_spec
    if witness is not None:
        expected.add(witness.node_id)
    return expected - {config.node_id}


def _peers_finding(config: Config, records: Sequence[PeerRecord], asked: _Cluster) -> Finding:
    expected = _expected_peers(config)
    by_mdns = {r.node_id for r in records}
    heard = (by_mdns | asked.heard) - {config.node_id}
    strangers = sorted(by_mdns - expected)
    stranger_text = (
        f"; {', '.join(strangers)} advertise cluster {config.cluster!r} but are not in peers "
        "(they are ignored)"
        if strangers
        else ""
    )
    if not expected:
        return Finding(
            "peers",
            "warn",
            f"no peers configured: a cluster of one has no failover{stranger_text}",
            "list the other nodes in peers (docs/operations.md)",
        )
    how = "by mDNS or the nodes that answered" if config.mdns else "by the nodes that answered"
    missing = sorted(expected - heard)
    found = sorted(expected & heard)
    if not missing:
        return Finding("peers", "ok", f"heard {', '.join(found)} ({how}){stranger_text}")
    return Finding(
        "peers",
        "warn",
        f"heard {', '.join(found) or 'none'} of {', '.join(sorted(expected))} ({how}); "
        f"not heard: {', '.join(missing)}{stranger_text}",
        "start them; let mDNS (UDP 5353) and cluster_port (UDP) pass between the nodes, or "
        "give their addresses in peers (node@host:port)",
    )


# --- the timers against the round trip -------------------------------------------------------


def _timers_finding(
    config: Config,
    records: Sequence[PeerRecord],
    asked: _Cluster,
    verify: ssl.SSLContext | bool,
    timeout_s: float,
) -> Finding:
    timers = config.election_timers()
    setting = (
        f"heartbeat_interval_s {timers.heartbeat_interval_s:g}, election_timeout_s "
        f"{timers.election_timeout_s:g}"
    )
    measured = _primary_rtts(asked.primary_url, verify, timeout_s)
    how = "heartbeat round trip measured by the primary"
    if not measured:
        scheme = "https" if config.tls_cert_file is not None else "http"
        urls = {r.node_id: f"{scheme}://{r.host}:{r.api_port}" for r in records}
        measured = _http_rtts(urls, verify, timeout_s)
        how = "HTTP round trip from here (a heartbeat's is shorter)"
    if not measured:
        return Finding(
            "timers",
            "warn",
            f"{setting}; no round trip measured: no primary and no peer answered",
            "run it again while the cluster runs",
        )
    peer, rtt_s = max(measured.items(), key=lambda item: item[1])
    said = f"{setting}; worst {how}: {peer} {rtt_s * 1000:.2f} ms"
    problem = round_trip_problem(timers.election_timeout_s, rtt_s)
    if problem is None:
        return Finding("timers", "ok", f"{said}, under 1/{RTT_HEADROOM} of the election timeout")
    return Finding("timers", "warn", f"{said}: {problem}", "")


def _primary_rtts(
    url: str | None, verify: ssl.SSLContext | bool, timeout_s: float
) -> dict[str, float]:
    """The mean heartbeat round trip to each peer, seconds, from the primary's metrics."""
    if url is None:
        return {}
    try:
        text = httpx.get(f"{url}/metrics", timeout=timeout_s, verify=verify).text
    except httpx.HTTPError:
        return {}
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != _RTT_METRIC:
            continue
        for sample in family.samples:
            peer = sample.labels.get("peer", "")
            if sample.name == f"{_RTT_METRIC}_sum":
                sums[peer] = sample.value
            elif sample.name == f"{_RTT_METRIC}_count":
                counts[peer] = sample.value
    return {peer: sums[peer] / n for peer, n in counts.items() if n > 0 and peer in sums}


def _http_rtts(
    urls: Mapping[str, str], verify: ssl.SSLContext | bool, timeout_s: float
) -> dict[str, float]:
    """The least of a few HTTP round trips to each node's /health, seconds, on one connection
    (the first request, which opens it, is not counted)."""
    found = {}
    for node, url in list(urls.items())[:_MAX_NODES_ASKED]:
        try:
            with httpx.Client(timeout=timeout_s, verify=verify) as client:
                client.get(f"{url}/health")
                times = []
                for _ in range(_HTTP_RTT_TRIES):
                    started = clock.monotonic()
                    client.get(f"{url}/health")
                    times.append(clock.monotonic() - started)
        except httpx.HTTPError:
            continue
        found[node] = min(times)
    return found


# --- the robot -------------------------------------------------------------------------------


def _robot_finding(config: Config, asked: _Cluster, timeout_s: float) -> Finding:
    if config.robot == "none":
        return Finding(
            "robot",
            "warn",
            "robot = 'none': this node drives no robot, so it never commands one as primary",
            'set robot = "go2" on a node that may lead',
        )
    if config.robot == "sim":
        return Finding("robot", "ok", "robot = 'sim': a simulated Go2 inside the daemon")
    local = asked.local["health"] if asked.local else None
    if local is not None and local.get("robot_connected") is True:
        return Finding("robot", "ok", f"{_robot_name(config)}: the running node reaches it")
    missing = _interface_problem(config.network_interface) if config.robot == "go2" else None
    if missing is not None:
        return Finding(
            "robot",
            "fail",
            f"{_robot_name(config)}: {missing}",
            f"set network_interface to the interface that faces the robot ({_ROBOT_DOCS})",
        )
    reachable, why = _probe_robot(config, timeout_s)
    if reachable:
        return Finding("robot", "ok", f"{_robot_name(config)}: reachable from here")
    if config.robot != "go2":
        fix = "start the simulator: ha-voice sim-robot --listen HOST:PORT"
    elif INSTALL_HINT in why:
        fix = "install the SDK as said (docs/jetson-install.md, sections 3 and 4)"
    else:
        fix = (
            f"check the cable, this Jetson's address on 192.168.123.0/24 and network_interface "
            f"({_ROBOT_DOCS})"
        )
    return Finding("robot", "fail", f"{_robot_name(config)}: unreachable: {why}", fix)


def _interface_problem(name: str) -> str | None:
    """Why the SDK could not bind `name`: not on this host, or without an IPv4 address (DDS
    binds an address of the interface); None if it could."""
    present = sorted(path.name for path in _SYS_NET.iterdir()) if _SYS_NET.is_dir() else []
    if name not in present:
        return f"no interface {name!r} on this host (there are: {', '.join(present)})"
    if not any(interface == name for interface, _ in local_ipv4()):
        return f"{name} is down, loopback, or has no IPv4 address"
    return None


def _robot_name(config: Config) -> str:
    if config.robot == "go2":
        return f"Go2 on {config.network_interface} ({config.robot_ip})"
    return config.robot


def _probe_robot(config: Config, timeout_s: float) -> tuple[bool, str]:
    """(reachable, why not) from a child process that is killed after `timeout_s` seconds."""
    request = json.dumps({"robot": config.robot, "interface": config.network_interface})
    try:
        done = subprocess.run(
            [sys.executable, "-c", _ROBOT_PROBE],
            input=request,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"no answer within {timeout_s:g} s"
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        return bool(answer["reachable"]), str(answer["why"])
    except (IndexError, KeyError, TypeError, ValueError):
        said = " ".join(done.stderr.split())[-300:]
        return False, f"the probe failed (exit status {done.returncode}): {said}"


def probe_robot_main() -> None:
    """The robot probe's child process: reads {"robot", "interface"} on stdin, prints
    {"reachable": bool, "why": str} as the last line on stdout."""
    import asyncio  # noqa: PLC0415

    request = json.loads(sys.stdin.read())
    reachable, why = asyncio.run(_async_probe(request["robot"], request["interface"]))
    print(json.dumps({"reachable": reachable, "why": why}))


async def _async_probe(spec: str, interface: str) -> tuple[bool, str]:
    import asyncio  # noqa: PLC0415

    from ha_voice.robot.backends import make_robot  # noqa: PLC0415
    from ha_voice.robot.base import RobotError  # noqa: PLC0415

    robot = make_robot(spec, interface)
    if robot is None:
        return False, "robot = 'none'"
    try:
        await robot.connect()
        if spec == "go2":
            await asyncio.sleep(_GO2_FIRST_SAMPLE_S)
        reachable = await robot.reachable()
    except RobotError as exc:
        return False, str(exc)
    finally:
        await robot.close()
    return reachable, "" if reachable else "no answer to the probe"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
