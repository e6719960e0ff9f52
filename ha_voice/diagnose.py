"""Why no primary gave `ha-voice send` a final answer, from what the nodes say.

`diagnose` asks the nodes it can reach (`GET /cluster`) so that the message names the likely
cause: nothing answers, too few voters hear each other (no quorum), an election or FAULT, or a
primary that is there now (then the command only needs retrying with its key). Without a
`--url`, `find_nodes` finds the cluster's nodes by their mDNS records, which every node keeps
whether or not it leads.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import httpx
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from ha_voice.cluster.discovery import (
    NODE_SERVICE_TYPE,
    PeerRecord,
    peer_from_txt,
    reachable_address,
)
from ha_voice.errors import RemoteError
from ha_voice.send_outcomes import NO_ANSWER, NO_PRIMARY, NO_QUORUM, Outcome

__all__ = ["diagnose", "find_nodes", "find_records"]

_ASK_TIMEOUT_S: Final = 1.0  # per node: a node that answers at all answers /cluster in ms
_RESOLVE_TIMEOUT_MS: Final = 500
# A cluster has a handful of members; a network that announces more names than this (a
# hostile or misconfigured host) gets the first ones resolved, not every one.
_MAX_RESOLVED: Final = 16
# Resolving stops after this much time in all, however many names were heard.
_RESOLVE_BUDGET_S: Final = 3.0


def diagnose(urls: Sequence[str], verify: ssl.SSLContext | bool) -> tuple[Outcome, str]:
    """Why no primary gave a final answer, from the first node in `urls` that answers
    `GET /cluster`: (NO_ANSWER if one leads now, NO_QUORUM, or NO_PRIMARY; the reason)."""
    for url in urls:
        view = _cluster_view(url, verify)
        if view is not None:
            return _judge(view)
    if not urls:
        return NO_PRIMARY, "no node of the cluster was found"
    return NO_PRIMARY, f"no node answers at {', '.join(urls)}: is ha-voice running there?"


def _cluster_view(url: str, verify: ssl.SSLContext | bool) -> dict[str, Any] | None:
    try:
        response = httpx.get(f"{url}/cluster", timeout=_ASK_TIMEOUT_S, verify=verify)
        view = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    return view if response.status_code == 200 and isinstance(view, dict) else None


def _judge(view: Mapping[str, Any]) -> tuple[Outcome, str]:
    node, role, term = view.get("node"), view.get("role"), view.get("term")
    if view.get("leader"):
        return NO_ANSWER, f"{node} says {view['leader']} leads in term {term} now"
    members = [m for m in view.get("members", []) if isinstance(m, dict)]
    voters = [m for m in members if m.get("voter")]
    # A member whose role this node knows was heard within its liveness window.
    heard = [m for m in voters if not m.get("self") and m.get("role") not in (None, "unknown")]
    silent = sorted(str(m.get("node")) for m in voters if not m.get("self") and m not in heard)
    reachable = len(heard) + any(m.get("self") for m in voters)
    needed = len(voters) // 2 + 1
    hears = f"{node} hears {len(heard)} of its {len(voters) - 1} peers"
    if silent:
        hears += f" ({', '.join(silent)} not heard)"
    fault = f"; fault_reason: {view['fault_reason']}" if view.get("fault_reason") else ""
    if voters and reachable < needed:
        return NO_QUORUM, (
            f"{hears}; a primary needs {needed} of {len(voters)} voters: start the missing "
            f"nodes, or check that the cluster port (UDP) passes between them{fault}"
        )
    return NO_PRIMARY, f"{hears}, but {node} is {role} in term {term} and knows no primary{fault}"


def find_nodes(cluster: str, scheme: str, timeout_s: float = 1.5) -> list[str]:
    """The API URLs (`scheme://host:port`) of the nodes of `cluster` that answer mDNS within
    about `timeout_s` seconds; [] if none does."""
    return [f"{scheme}://{r.host}:{r.api_port}" for r in find_records(cluster, timeout_s)]


def find_records(cluster: str, timeout_s: float = 1.5) -> list[PeerRecord]:
    """The well-formed mDNS records of the nodes of `cluster` heard within about `timeout_s`
    seconds, then resolved for at most `_RESOLVE_BUDGET_S` seconds in all (`_RESOLVE_TIMEOUT_MS`
    each); only instance names of `cluster` (`node@cluster`) are resolved, at most
    `_MAX_RESOLVED` of them. [] if none answers."""
    zc = Zeroconf(interfaces=InterfaceChoice.All)
    try:
        names: dict[str, None] = {}  # ordered, deduplicated
        suffix = f"@{cluster}.{NODE_SERVICE_TYPE}".lower()

        def added(name: str, state_change: ServiceStateChange, **_: object) -> None:
            ours = name.lower().endswith(suffix)
            if state_change is ServiceStateChange.Added and ours and len(names) < _MAX_RESOLVED:
                names[name] = None

        browser = ServiceBrowser(zc, NODE_SERVICE_TYPE, handlers=[added])
        threading.Event().wait(timeout_s)  # answers trickle in over RFC 6762's delays
        browser.cancel()
        deadline = time.monotonic() + _RESOLVE_BUDGET_S
        records: list[PeerRecord] = []
        for name in list(names):
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            record = _node_record(zc, name, min(_RESOLVE_TIMEOUT_MS, left_ms))
            if record is not None and record.cluster == cluster:
                records.append(record)
        return records
    finally:
        zc.close()


def _node_record(zc: Zeroconf, name: str, timeout_ms: int) -> PeerRecord | None:
    info = ServiceInfo(NODE_SERVICE_TYPE, name)
    if not info.request(zc, timeout_ms):
        return None
    hosts = info.parsed_addresses(IPVersion.V4Only)
    instance = name[: -len(NODE_SERVICE_TYPE) - 1]
    try:
        return peer_from_txt(instance, reachable_address(hosts), info.port, info.decoded_properties)
    except RemoteError:
        return None
