"""The host side of a chaos run: make the namespaces, run the harness in the client's, clean up.

Namespaces (tests/integration/netns.py `Lan`, one bridge): members 0..k-1 (nodes, then the
witness), the robot's, then the client's. The harness itself runs in the client's namespace
(`python -m tests.chaos inner SPEC`), so that its workload, its mDNS browser and its ARP probe see
the LAN as a client does; from there it starts every other process through `ip netns exec`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos.topology import TOPOLOGIES
from tests.integration.netns import Lan, created

__all__ = ["ChaosSpec", "run_outside"]

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ChaosSpec:
    """Everything a run needs; JSON on the command line of the inner process."""

    topology: str
    seed: int
    faults: int
    interval_s: float = 2.0
    bound_s: float = 2.0  # a primary back, and clients shown it, this long after a fault heals
    kinds: list[str] = field(default_factory=list)  # [] for the topology's own
    subnet: str = "10.219.0.0/24"
    # Filled in by `run_outside` from the LAN it made:
    addresses: list[str] = field(default_factory=list)  # the members', then robot, client
    namespaces: list[str] = field(default_factory=list)
    bridge: str = ""
    vip: str = ""
    dump_dir: str = ""  # where a failed run writes its history, faults and samples

    def command_line(self) -> str:
        """The command that replays this run from the repository's root (as root)."""
        kinds = f" --kinds {','.join(self.kinds)}" if self.kinds else ""
        return (
            f"PYTHONPATH=. python -m tests.chaos --topology {self.topology} --seed {self.seed} "
            f"--faults {self.faults} --interval-s {self.interval_s} --bound-s {self.bound_s}"
            f"{kinds}"
        )


def run_outside(spec: ChaosSpec, *, timeout_s: float = 3600.0) -> tuple[dict[str, Any], str]:
    """Make the LAN, run `spec` in its client namespace; (the run's JSON summary, its stderr).

    The summary is the last stdout line of the inner run (`run.ChaosRun.result`); a run that
    crashed raises RuntimeError with its stderr's tail.
    """
    topology = TOPOLOGIES[spec.topology]
    size = topology.members + 2
    with created(Lan(size, subnet=spec.subnet, prefix="hvc")) as lan:
        for index in range(size):
            # Nothing may wait for ARP while a link is cut: such packets would leave when it
            # comes back, after the sender's lease (docs/operations.md, "The robot's network").
            for key in ("unres_qlen", "unres_qlen_bytes"):
                lan[index].run(["sysctl", "-qw", f"net.ipv4.neigh.eth0.{key}=0"])
        assert lan.bridge is not None
        spec.addresses = [lan.address(i) for i in range(size)]
        spec.namespaces = [lan[i].name for i in range(size)]
        spec.bridge = lan.bridge.name
        spec.vip = str(lan.network.network_address + 200)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")}
        env["PYTHONPATH"] = str(ROOT)
        inner = lan[size - 1].popen(
            [sys.executable, "-m", "tests.chaos", "inner", json.dumps(asdict(spec))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        out, err = inner.communicate(timeout=timeout_s)
    lines = out.strip().splitlines()
    if inner.returncode != 0 or not lines:
        raise RuntimeError(f"the chaos run crashed (exit {inner.returncode}):\n{err[-6000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result, err
