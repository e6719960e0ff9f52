"""The Jepsen-style run with partitions: three nodes in their own network namespaces on a bridge.

The harness (workload, nemesis, checker: tests/jepsen.py) and the simulated Go2 run in a fourth
namespace, the client's; the nemesis adds partitions — the primary's bridge port set down for
1-3 s — to the process faults (SIGKILL, SIGSTOP, SIGTERM). The robot is on the same LAN, so a
partitioned primary loses its robot too; its lease still ends before anyone else may lead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.netns import Lan, created

ROOT = Path(__file__).resolve().parents[2]
CLIENT = 3
FAULTS = int(os.environ.get("HA_VOICE_JEPSEN_NETNS_FAULTS", "20"))

# Runs inside the client's namespace: the whole harness, partitions by the bridge's ports.
_INNER = """
import json, subprocess, sys
from tests.jepsen import run_jepsen
args = json.loads(sys.argv[1])

def partition(node, cut):
    port = args["ports"][node]
    state = "down" if cut else "up"
    subprocess.run(["ip", "-n", args["bridge"], "link", "set", port, state], check=True)

run = run_jepsen(
    args["faults"],
    seed=args["seed"],
    hosts=args["hosts"],
    prefixes=args["prefixes"],
    robot_host=args["robot_host"],
    partition=partition,
)
print(run.report.summary(), file=sys.stderr)
kinds = {}
for fault in run.faults:
    kinds[fault.kind.value] = kinds.get(fault.kind.value, 0) + 1
print(json.dumps({"ok": run.report.ok, "faults": len(run.faults), "kinds": kinds}))
"""


@pytest.fixture
def lan() -> Iterator[Lan]:
    with created(Lan(4, subnet="10.217.0.0/24", prefix="hvj")) as network:
        for index in range(3):
            # Nothing may wait for ARP while a link is down: such packets leave when it comes
            # back, after the sender's lease (docs/operations.md, "The robot's network").
            for key in ("unres_qlen", "unres_qlen_bytes"):
                network[index].run(["sysctl", "-qw", f"net.ipv4.neigh.eth0.{key}=0"])
        yield network


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_no_answered_command_is_lost_or_run_twice_under_partitions(lan: Lan) -> None:
    assert lan.bridge is not None
    args = {
        "faults": FAULTS,
        "seed": int(os.environ.get("HA_VOICE_JEPSEN_SEED", "7")),
        "hosts": [lan.address(i) for i in range(3)],
        "prefixes": [lan[i].exec_argv([]) for i in range(3)],
        "robot_host": lan.address(CLIENT),
        "bridge": lan.bridge.name,
        "ports": {f"n{i + 1}": lan.port(i) for i in range(3)},
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")}
    env["PYTHONPATH"] = str(ROOT)
    inner = lan[CLIENT].popen(
        [sys.executable, "-c", _INNER, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    out, err = inner.communicate(timeout=850)
    print(err[-4000:])
    assert inner.returncode == 0, err[-4000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["ok"], err[-4000:]
    assert result["faults"] >= FAULTS
    assert result["kinds"].get("partition_primary", 0) >= 1, result
