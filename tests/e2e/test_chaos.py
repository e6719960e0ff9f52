"""The chaos suite's CI run: a short seeded random schedule on each topology (tests/chaos).

Three `ha-voice run` nodes; two nodes and a witness; two nodes with `two_node = true` — each
member in its own network namespace on a bridge, mDNS and a floating IP on, the sim robot and the
client in namespaces of their own. The nemesis mixes every fault its topology allows (SIGKILL,
SIGSTOP past the election timeout, SIGTERM and restart, nftables partitions and one-way cuts, a
cut from the robot, random loss and duplication, fsfreeze of a state directory, a CPU hog), about
32 faults in all. Every rule of tests/jepsen.py's and tests/chaos/checker.py's checkers must
hold; a failure prints the replay (seed, topology, timeline, command line).

What clients see is checked like the rest: a passive mDNS browser and the floating IP's ARP
owner must point at the primary within one failover time after every fault (a resumed paused
primary's goodbye once flushed the new primary's record from every browser: no longer).
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.chaos.lan import ChaosSpec, run_outside

# (topology, faults): 16 + 8 + 8 = 32 faults, about 3-4 minutes on two busy cores.
SCHEDULE = {"three": 16, "witness": 8, "two_node": 8}
SEED = int(os.environ.get("HA_VOICE_CHAOS_SEED", "14"))


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(shutil.which("nft") is None, reason="nft: apt-get install nftables")
@pytest.mark.parametrize("topology", sorted(SCHEDULE))
def test_a_random_schedule_of_faults_breaks_no_rule(topology: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces, nftables and loop mounts need root")
    spec = ChaosSpec(topology, SEED, SCHEDULE[topology], subnet=_subnet(topology))
    result, err = run_outside(spec, timeout_s=800)
    print(err[-6000:])
    assert result["faults"] >= SCHEDULE[topology], result["replay"]
    details: dict[str, list[str]] = result["details"]
    assert not details, f"{details}\n{result['replay']}"


def _subnet(topology: str) -> str:
    """One subnet per topology: parallel workers (pytest -n 2) never share a LAN."""
    return f"10.{221 + sorted(SCHEDULE).index(topology)}.0.0/24"
