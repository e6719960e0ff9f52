"""`ha-voice demo` on the simulator: three nodes, the primary SIGKILLed, the takeover timed.

Virtual time, so it runs in a blink and always tells the same story for a seed. Events are
printed as text, or as one JSON object per line ending with a summary.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

from ha_voice.cluster.events import Role
from ha_voice.simulation.checker import Checker
from ha_voice.simulation.engine import ClusterSpec, SimCluster

__all__ = ["run_demo"]


def _until(cluster: SimCluster, condition: Callable[[], bool], limit_s: float) -> float | None:
    """Advance in 1 ms steps until `condition` holds; the virtual time it did, or None."""
    deadline = cluster.now + limit_s
    while cluster.now < deadline:
        if condition():
            return cluster.now
        cluster.run_until(cluster.now + 0.001)
    return None


def run_demo(*, seed: int = 1, as_json: bool = False, out: TextIO = sys.stdout) -> int:
    """Run the demo; 0 if a backup took over and the checker found nothing, else 1."""

    def emit(event: str, text: str, **fields: Any) -> None:
        if as_json:
            out.write(json.dumps({"t_s": round(cluster.now, 4), "event": event, **fields}) + "\n")
        else:
            out.write(f"{cluster.now:8.3f} s  {text}\n")

    cluster = SimCluster(ClusterSpec(3), seed)
    checker = Checker(cluster)
    if not as_json:
        out.write("ha-voice demo: 3 nodes on a simulated network (virtual time, wired timers)\n")
    cluster.start_all()
    if _until(cluster, lambda: len(cluster.primaries()) == 1, 5.0) is None:
        emit("error", "no primary was elected")
        return 1
    (old,) = cluster.primaries()
    emit("primary", f"{old} is primary (term {_term(cluster, old)})", node=old)
    cluster.run_until(cluster.now + 1.5)
    emit("kill", f"SIGKILL {old}", node=old, signal="SIGKILL")
    killed_at = cluster.now
    cluster.crash(old)
    took_over = _until(cluster, lambda: bool(cluster.primaries()), 10.0)
    if took_over is None:
        emit("error", "no backup took over")
        return 1
    (new,) = cluster.primaries()
    failover_ms = (took_over - killed_at) * 1000
    emit(
        "takeover",
        f"{new} took over (term {_term(cluster, new)}): failover {failover_ms:.0f} ms",
        node=new,
        term=_term(cluster, new),
        failover_ms=round(failover_ms, 1),
    )
    cluster.run_until(cluster.now + 1.0)
    emit("restart", f"restart {old}", node=old)
    cluster.start(old)
    rejoined = _until(cluster, lambda: _follows(cluster, old, new), 5.0)
    if rejoined is not None:
        emit("rejoined", f"{old} rejoined as backup, following {new}", node=old, role="backup")
    summary = {
        "failover_ms": round(failover_ms, 1),
        "old_primary": old,
        "new_primary": new,
        "mode": "simulated",
        "safety_violations": len(checker.violations),
    }
    if as_json:
        out.write(json.dumps({"event": "summary", **summary}) + "\n")
    else:
        out.write(
            f"summary: {new} took over from {old} in {failover_ms:.0f} ms of virtual time; "
            f"safety violations: {len(checker.violations)}\n"
        )
    return 0 if rejoined is not None and not checker.violations else 1


def _term(cluster: SimCluster, node: str) -> int:
    election = cluster.nodes[node].election
    return election.term if election else 0


def _follows(cluster: SimCluster, node: str, leader: str) -> bool:
    election = cluster.nodes[node].election
    return election is not None and election.role is Role.BACKUP and election.leader == leader
