"""`ha-voice check` over the network: the node running here, the peers heard, the timers
against the measured round trip, and the robot.

Invariants:
- Every probe is bounded: one mDNS browse of `mdns_wait_s`; HTTP requests to a bounded number
  of nodes, each whole request (connect, headers, body) cancelled at `http_timeout_s` and its
  body cut at a byte cap, all of them within `network_budget_s`; and the robot probed in a child
  process killed at `robot_timeout_s` (the Go2 SDK's calls block in C; a thread could not be
  stopped).
- What a node answers is a stranger's word (any host on the LAN can advertise the cluster over
  mDNS): each field is used only if it has the expected type, and an answer that is not an
  ha-voice node's is a finding, never an exception.
- The round trip is the primary's own measurement (`ha_voice_heartbeat_rtt_seconds`, the one the
  daemon warns on) when a primary answers; else an HTTP round trip from here, said as such.
- The robot is probed as the daemon's `_watch_robot` does: the backend `make_robot` gives,
  `connect()`, then `reachable()`.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit

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
    from ha_voice.config import Config, Role

__all__ = ["network_findings", "probe_robot_main"]

_T = TypeVar("_T")
_RTT_METRIC: Final = "ha_voice_heartbeat_rtt_seconds"
_HTTP_RTT_TRIES: Final = 3  # the least of a few: queueing only ever adds
_MAX_NODES_ASKED: Final = 9  # a cluster has a handful of members; mDNS may bring strangers
# A node's /health and /cluster are a few kB, its /metrics about 100 kB (measured on a 3-node
# LocalCluster): the caps leave room and stop a stranger from filling memory.
_MAX_JSON_BYTES: Final = 1 << 20
_MAX_METRICS_BYTES: Final = 8 << 20
_MAX_URL_CHARS: Final = 300
_MAX_SHOWN_CHARS: Final = 200
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
    refused: list[str] = field(default_factory=list)  # other nodes' answers that were not used


def network_findings(config: Config, options: CheckOptions) -> list[Finding]:
    """The running node, the peers, the timers against the round trip, and (for a node) the
    robot."""
    from ha_voice.client import ssl_context  # noqa: PLC0415
    from ha_voice.diagnose import find_records  # noqa: PLC0415

    records = find_records(config.cluster, options.mdns_wait_s) if config.mdns else []
    records = [r for r in records if r.node_id != config.node_id]
    http = _Http(
        ssl_context(config.tls_ca_file),
        options.http_timeout_s,
        clock.monotonic() + options.network_budget_s,
    )
    asked = _ask_nodes(config, records, http)
    findings = [
        _node_finding(config, asked, options.role),
        _peers_finding(config, records, asked),
        _timers_finding(config, records, asked, http),
    ]
    if options.role == "node":
        findings.append(_robot_finding(config, asked, options.robot_timeout_s))
    return findings


# --- HTTP, bounded -----------------------------------------------------------------------------


class _Refused(ValueError):
    """A node's answer that is not what an ha-voice node answers."""


# What a request to a node may end in besides an answer; each becomes a finding's words.
_FAILED: Final = (
    httpx.HTTPError,
    httpx.InvalidURL,
    httpx.StreamError,
    asyncio.TimeoutError,  # TimeoutError itself from Python 3.11; not on JetPack 6's 3.10
    ValueError,
)


@dataclass(frozen=True)
class _Http:
    """GET requests, each cancelled whole after `timeout_s` seconds (httpx's own timeout
    bounds each read, so a body sent a byte at a time never ends) and none begun after
    `deadline` (monotonic seconds)."""

    verify: ssl.SSLContext | bool
    timeout_s: float
    deadline: float

    def get(self, url: str, max_bytes: int) -> tuple[int, bytes]:
        """(status, body) of GET `url`; raises one of `_FAILED`."""
        return self._run(_async_get(url, self.verify, max_bytes))

    def round_trips(self, url: str, tries: int) -> list[float]:
        """Seconds of `tries` GETs of `url` on one connection, after one that opens it."""
        return self._run(_async_round_trips(url, self.verify, tries))

    def _run(self, request: Coroutine[Any, Any, _T]) -> _T:
        limit_s = min(self.timeout_s, self.deadline - clock.monotonic())
        if limit_s <= 0:
            request.close()
            raise asyncio.TimeoutError("the time for the network checks was spent")
        try:
            return asyncio.run(asyncio.wait_for(request, limit_s))
        except asyncio.TimeoutError:
            raise asyncio.TimeoutError(f"no whole answer within {limit_s:.3g} s") from None


async def _async_get(url: str, verify: ssl.SSLContext | bool, max_bytes: int) -> tuple[int, bytes]:
    async with (
        httpx.AsyncClient(verify=verify) as client,
        client.stream("GET", url) as response,
    ):
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > max_bytes:
                raise _Refused(f"answered more than {max_bytes} bytes")
        return response.status_code, bytes(body)


async def _async_round_trips(url: str, verify: ssl.SSLContext | bool, tries: int) -> list[float]:
    async with httpx.AsyncClient(verify=verify) as client:
        await client.get(url)
        times = []
        for _ in range(tries):
            started = clock.monotonic()
            await client.get(url)
            times.append(clock.monotonic() - started)
        return times


# --- the nodes -------------------------------------------------------------------------------


def _local_url(config: Config) -> str:
    scheme = "https" if config.tls_cert_file is not None else "http"
    host = "127.0.0.1" if config.api_listen_address == WILDCARD else config.api_listen_address
    return f"{scheme}://{host}:{config.port}"


def _ask_nodes(config: Config, records: Sequence[PeerRecord], http: _Http) -> _Cluster:
    """Ask this host's node, then the nodes mDNS found, then the primary one of them names
    (a backup hears only the primary; the primary hears every member)."""
    asked = _Cluster()
    scheme = "https" if config.tls_cert_file is not None else "http"
    local = _local_url(config)
    urls = [local, *(f"{scheme}://{r.host}:{r.api_port}" for r in records)][:_MAX_NODES_ASKED]
    for url in urls:
        _ask(asked, url, url == local, http)
    if asked.primary_url is not None and asked.primary_url not in urls:
        _ask(asked, asked.primary_url, False, http)
    return asked


def _ask(asked: _Cluster, url: str, local: bool, http: _Http) -> None:
    try:
        health = _get_json(f"{url}/health", http)
        view = _get_json(f"{url}/cluster", http)
    except _FAILED as exc:
        if local:
            asked.local_error = _one_line(exc)
        elif isinstance(exc, (_Refused, asyncio.TimeoutError)):
            asked.refused.append(f"{url}: {_one_line(exc)}")
        return
    if local:
        asked.local = {"health": health, "cluster": view}
    asked.heard |= _heard(view)
    leader = _text(view.get("leader"))
    leads = leader is not None and leader == _text(view.get("node"))
    asked.primary_url = asked.primary_url or (url if leads else _primary_api(view))


def _get_json(url: str, http: _Http) -> dict[str, Any]:
    """The JSON object a node answers `url` with: 200, or 503 (a failing node's /health);
    _Refused for anything else, such as another server on the port."""
    status, body = http.get(url, _MAX_JSON_BYTES)
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
        answer = None
    if status not in (200, 503) or not isinstance(answer, dict):
        raise _Refused(f"answered {status}, which is not an ha-voice node's answer")
    return answer


def _members(view: Mapping[str, Any]) -> list[dict[str, Any]]:
    members = view.get("members")
    return [m for m in members if isinstance(m, dict)] if isinstance(members, list) else []


def _heard(view: Mapping[str, Any]) -> set[str]:
    """Members the answering node hears now (a role it knows), itself included."""
    return {
        node
        for m in _members(view)
        if (node := _text(m.get("node"))) is not None
        and (m.get("self") is True or m.get("role") not in (None, "unknown", "unreachable"))
    }


def _primary_api(view: Mapping[str, Any]) -> str | None:
    """The API address of the primary the answering node names, if it is an http(s) URL."""
    leader = _text(view.get("leader"))
    apis = [m.get("api") for m in _members(view) if leader is not None and m.get("node") == leader]
    api = apis[0] if apis else None
    if not isinstance(api, str) or len(api) > _MAX_URL_CHARS:
        return None
    try:
        parts = urlsplit(api)
        usable = parts.scheme in ("http", "https") and parts.hostname and not parts.path.strip("/")
    except ValueError:  # such as a bracketed host that is not an IPv6 address
        return None
    return api.rstrip("/") if usable else None


def _text(value: object) -> str | None:
    """`value` if it is a short string, else None."""
    return value if isinstance(value, str) and len(value) <= _MAX_SHOWN_CHARS else None


def _shown(value: object) -> str:
    """A field of a node's answer as words for a finding: short, on one line."""
    return " ".join(str(value).split())[:_MAX_SHOWN_CHARS]


def _node_finding(config: Config, asked: _Cluster, role: Role) -> Finding:
    url = _local_url(config)
    if asked.local is None:
        return Finding(
            "node",
            "warn",
            f"no ha-voice node answers at {url} ({asked.local_error})",
            "start it (sudo systemctl start ha-voice); before a start (ExecStartPre=) this is "
            "expected; if another program answers there, set port to ha-voice's",
        )
    health, view = asked.local["health"], asked.local["cluster"]
    node = health.get("node")
    said = (
        f"{_shown(node)} answers at {url}: {_shown(view.get('role'))} in term "
        f"{_shown(view.get('term'))}, primary {_shown(view.get('leader') or 'none')}, status "
        f"{_shown(health.get('status'))}"
    )
    if node != config.node_id:
        return Finding(
            "node",
            "warn",
            f"{said}; but this configuration's node_id is {config.node_id!r}",
            "check the port and node_id: another node's configuration answers here",
        )
    if (view.get("role") == "witness") != (role == "witness"):
        return Finding(
            "node",
            "warn",
            f"{said}; but it was checked as a {role}",
            "check a witness with --witness, a node without it",
        )
    return _node_status(said, health)


def _node_status(said: str, health: Mapping[str, Any]) -> Finding:
    status = health.get("status")
    speech = health.get("speech")
    if isinstance(speech, dict) and speech.get("configured"):
        loaded = (
            f"{_shown(speech.get('model'))} on {_shown(speech.get('device'))}, "
            f"{_shown(speech.get('compute_type'))}"
            if speech.get("ready")
            else f"not ready: {_shown(speech.get('reason'))}"
        )
        said += f"; speech {loaded}"
    if status == "ok":
        return Finding("node", "ok", said)
    reason = _shown(health.get("fault_reason") or "no reason given")
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
    found = _peers_heard(config, records, asked)
    if not asked.refused:
        return found
    detail = f"{found.detail}; {'; '.join(asked.refused)} (ignored)"
    fix = "find what answers there: only ha-voice nodes should advertise the cluster"
    return Finding("peers", "fail" if found.level == "fail" else "warn", detail, found.fix or fix)


def _peers_heard(config: Config, records: Sequence[PeerRecord], asked: _Cluster) -> Finding:
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
    config: Config, records: Sequence[PeerRecord], asked: _Cluster, http: _Http
) -> Finding:
    timers = config.election_timers()
    setting = (
        f"heartbeat_interval_s {timers.heartbeat_interval_s:g}, election_timeout_s "
        f"{timers.election_timeout_s:g}"
    )
    measured = _primary_rtts(asked.primary_url, http)
    how = "mean heartbeat round trip measured by the primary"
    if not measured:
        scheme = "https" if config.tls_cert_file is not None else "http"
        urls = {r.node_id: f"{scheme}://{r.host}:{r.api_port}" for r in records}
        measured = _http_rtts(urls, http)
        how = "HTTP round trip from here (a heartbeat's is shorter)"
    if not measured:
        return Finding(
            "timers",
            "warn",
            f"{setting}; no round trip measured: no primary and no peer answered",
            "run it again while the cluster runs",
        )
    peer, rtt_s = max(measured.items(), key=lambda item: item[1])
    said = f"{setting}; worst {how}: {_shown(peer)} {rtt_s * 1000:.2f} ms"
    problem = round_trip_problem(timers.election_timeout_s, rtt_s)
    if problem is None:
        return Finding("timers", "ok", f"{said}, under 1/{RTT_HEADROOM} of the election timeout")
    return Finding("timers", "warn", f"{said}: {problem}", "")


def _primary_rtts(url: str | None, http: _Http) -> dict[str, float]:
    """The mean heartbeat round trip to each peer, seconds, from the primary's metrics; {} if
    the primary does not answer them in Prometheus's text format."""
    if url is None:
        return {}
    try:
        status, body = http.get(f"{url}/metrics", _MAX_METRICS_BYTES)
        if status != 200:
            return {}
        sums, counts = _rtt_sums(body.decode())
    except _FAILED:
        return {}
    return {peer: sums[peer] / n for peer, n in counts.items() if n > 0 and peer in sums}


def _rtt_sums(text: str) -> tuple[dict[str, float], dict[str, float]]:
    """({peer: sum of seconds}, {peer: count}) of the round-trip histogram in `text`; the
    parser's ValueError for text that is not Prometheus's format."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != _RTT_METRIC:
            continue
        for sample in family.samples:
            peer = sample.labels.get("peer", "")
            if not math.isfinite(sample.value) or sample.value < 0:
                continue
            if sample.name == f"{_RTT_METRIC}_sum":
                sums[peer] = sample.value
            elif sample.name == f"{_RTT_METRIC}_count":
                counts[peer] = sample.value
    return sums, counts


def _http_rtts(urls: Mapping[str, str], http: _Http) -> dict[str, float]:
    """The least of a few HTTP round trips to each node's /health, seconds, on one connection
    (the first request, which opens it, is not counted)."""
    found = {}
    for node, url in list(urls.items())[:_MAX_NODES_ASKED]:
        try:
            found[node] = min(http.round_trips(f"{url}/health", _HTTP_RTT_TRIES))
        except _FAILED:
            continue
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

    request = json.loads(sys.stdin.read())
    reachable, why = asyncio.run(_async_probe(request["robot"], request["interface"]))
    print(json.dumps({"reachable": reachable, "why": why}))


async def _async_probe(spec: str, interface: str) -> tuple[bool, str]:

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
