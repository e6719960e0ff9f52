"""`ha-voice demo`: three real daemons on loopback, the primary SIGKILLed, the takeover timed.

It starts three `ha-voice run` processes in a throwaway directory, waits for a primary, kills it
with SIGKILL, measures how long until a survivor answers 200 on /cluster/primary, restarts the
killed node, shows it rejoin as a backup, stops everything with SIGTERM and removes the directory.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any, TextIO

from ha_voice.local_cluster import LocalCluster

__all__ = ["run_demo"]

_START_TIMEOUT_S = 20.0
_TAKEOVER_TIMEOUT_S = 10.0


class _Printer:
    def __init__(self, out: TextIO, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.started = time.monotonic()

    def __call__(self, event: str, text: str, **fields: Any) -> None:
        elapsed = time.monotonic() - self.started
        if self.as_json:
            self.out.write(json.dumps({"t_s": round(elapsed, 3), "event": event, **fields}) + "\n")
        else:
            self.out.write(f"{elapsed:7.2f} s  {text}\n")
        self.out.flush()


def run_demo(*, as_json: bool = False, out: TextIO = sys.stdout) -> int:
    """Run the demo; 0 if a backup took over and the killed node rejoined."""
    emit = _Printer(out, as_json)
    with LocalCluster(3) as cluster:
        if not as_json:
            out.write(f"ha-voice demo: 3 nodes on 127.0.0.1, state in {cluster.dir}\n")
        cluster.start()
        first = cluster.wait_for_primary(_START_TIMEOUT_S)
        if first is None:
            emit("error", "no primary within 20 s; logs: " + str(cluster.dir))
            return 1
        old = first[0]
        view = cluster.nodes[old].cluster() or {}
        emit("primary", f"{old} is primary (term {view.get('term')})", node=old)
        time.sleep(1.0)
        emit("kill", f"SIGKILL {old}", node=old, signal="SIGKILL")
        killed_at = time.monotonic()
        cluster.kill(old)
        taken = cluster.wait_for_primary(_TAKEOVER_TIMEOUT_S, exclude=old, poll_s=0.002)
        if taken is None:
            emit("error", "no backup took over within 10 s")
            return 1
        new, at = taken
        failover_ms = (at - killed_at) * 1000
        view = cluster.nodes[new].cluster() or {}
        emit(
            "takeover",
            f"{new} took over (term {view.get('term')}): failover {failover_ms:.0f} ms",
            node=new,
            term=view.get("term"),
            failover_ms=round(failover_ms, 1),
        )
        emit("restart", f"restart {old}", node=old)
        cluster.nodes[old].start()
        rejoined = cluster.wait_for(
            old, lambda v: v["role"] == "backup" and v["leader"] == new, _START_TIMEOUT_S
        )
        if rejoined is None:
            emit("error", f"{old} did not rejoin as backup")
            return 1
        emit("rejoined", f"{old} rejoined as backup, following {new}", node=old, role="backup")
        stopped = _stop_all(cluster)
        emit("stopped", "SIGTERM to all: every node exited 0" if stopped else "not all exited 0")
        summary = {
            "failover_ms": round(failover_ms, 1),
            "old_primary": old,
            "new_primary": new,
            "mode": "processes",
            "clean_exit": stopped,
        }
        if as_json:
            out.write(json.dumps({"event": "summary", **summary}) + "\n")
        else:
            out.write(
                f"summary: {new} took over from {old} in {failover_ms:.0f} ms "
                f"(SIGKILL to first 200 on /cluster/primary)\n"
            )
        return 0 if stopped else 1


def _stop_all(cluster: LocalCluster) -> bool:
    for node in cluster.running():
        node.signal(signal.SIGTERM)
    codes = [node.wait(15.0) for node in cluster.nodes.values() if node.process is not None]
    return all(code == 0 for code in codes)
