"""One failover of each kind, phase by phase, on three namespaced nodes: the primary's daemon
killed (SIGKILL), paused (SIGSTOP), stopped gracefully (SIGTERM: a handover) and its host lost
(its bridge port set down). Every node's log lines from the fault on, as milliseconds after
it, and what the client saw. Run as root (namespaces):

    python tests/bench/trace_evidence.py

Not a pass/fail test; docs/benchmarks.md quotes one run.
"""

from __future__ import annotations

import datetime
import re
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.e2e.evidence_rig import Rig, evidence_rig

_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ \S+: (.*)$")
# Start-up chatter of a restarted node, not part of the failover.
_NOISE = re.compile(r"speech|wyoming|Uvicorn|Started|Waiting|Application|listening on")


def trace(rig: Rig, fault: signal.Signals | str, window_s: float = 1.2) -> list[str]:
    outcome = rig.fail(fault)
    rows = []
    for node in rig.cluster.nodes.values():
        for line in node.log_path.read_text().splitlines():
            match = _LINE.match(line)
            if match is None or _NOISE.search(match[2]):
                continue
            at = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            after_ms = (at - outcome.signalled_at_unix_s) * 1000
            if -5 < after_ms < window_s * 1000:
                rows.append((after_ms, node.node_id, match[2][:160]))
    lines = [f"{outcome.signal} of {outcome.old}: takeover by {outcome.new}, cause {outcome.cause}"]
    lines += [f"  +{ms:5.0f} ms  {node}  {text}" for ms, node, text in sorted(rows)]
    for what, value in (
        ("the floating IP reaches the new primary", outcome.connected_s),
        ("a robot command is accepted through it", outcome.accepted_s),
    ):
        shown = f"+{value * 1000:5.0f} ms" if value is not None else "never"
        lines.append(f"  {shown}  client: {what}")
    return lines


def main() -> int:
    with evidence_rig(3, witness=False, subnet="10.224.0.0/24", prefix="hvtr") as rig:
        for fault in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM, "cut"):
            print("\n".join(trace(rig, fault)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
