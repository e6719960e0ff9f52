"""One chaos run, inside the client's namespace (see lan.py): start everything, let the nemesis
loose under the workload, heal, settle, fetch every journal, judge, describe."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ha_voice.local_cluster import LocalCluster, SimRobotProcess
from ha_voice.robot.sim_server import fetch_journal, fetch_verdict
from tests.chaos.checker import ChaosReport, check_chaos
from tests.chaos.lan import ChaosSpec
from tests.chaos.nemesis import ChaosNemesis, Member, StateDisks, heal_nft
from tests.chaos.observe import ArpProbe, ClientView, Monitor, RoleSample, ViewSample
from tests.chaos.topology import TOPOLOGIES, Topology
from tests.jepsen import (
    FaultKind,
    JepsenRun,
    Workload,
    check,
    ha_voice_client_factory,
    heal,
    quiesce,
)

__all__ = ["ChaosRun", "run_chaos"]

API_PORT = 8888  # every node's, in its own namespace (LocalCluster's default under a prefix)


@dataclass
class ChaosRun:
    """A jepsen run plus what the chaos observers saw, both verdicts, and the spec to replay."""

    spec: ChaosSpec
    jepsen: JepsenRun
    roles: list[RoleSample]
    views: list[ViewSample]
    chaos: ChaosReport
    started_s: float

    @property
    def ok(self) -> bool:
        return self.jepsen.report.ok and self.chaos.ok

    def replay(self) -> str:
        """Seed, topology, the faults from the start, and the command that runs it again."""
        lines = [
            f"chaos run: topology {self.spec.topology}, seed {self.spec.seed}, "
            f"{len(self.jepsen.faults)} faults, bound {self.spec.bound_s}s",
            "timeline (s from the start; the schedule is seeded, the targets follow who leads):",
        ]
        for fault in self.jepsen.faults:
            detail = f" ({fault.detail})" if fault.detail else ""
            lines.append(
                f"  +{fault.at_s - self.started_s:8.3f} {fault.kind.value} {fault.target}{detail}"
                f", healed +{fault.healed_s - self.started_s:.3f}"
            )
        lines.append(f"replay: {self.spec.command_line()}")
        return "\n".join(lines)

    def result(self) -> dict[str, Any]:
        """The JSON summary the host side reads (lan.run_outside)."""
        report = self.jepsen.report
        return {
            "ok": self.ok,
            "topology": self.spec.topology,
            "seed": self.spec.seed,
            "faults": len(self.jepsen.faults),
            "kinds": dict(Counter(f.kind.value for f in self.jepsen.faults)),
            "violations": {
                **{k: len(v) for k, v in report.violations.items()},
                **{k: len(v) for k, v in self.chaos.violations.items()},
            },
            "details": {
                k: v[:10] for k, v in {**report.violations, **self.chaos.violations}.items() if v
            },
            "sent": report.sent,
            "acknowledged": report.acknowledged,
            "unavailable_ms": report.unavailable_ms,
            "back_ms": self.chaos.back_ms,
            "view_lag_ms": self.chaos.view_lag_ms,
            "took_s": round(self.jepsen.took_s, 1),
            "replay": self.replay(),
        }

    def dump(self, directory: Path) -> None:
        """The jepsen files plus the role and view samples, as JSON, into `directory`."""
        self.jepsen.dump(directory)
        (directory / "roles.json").write_text(json.dumps([asdict(s) for s in self.roles]))
        (directory / "views.json").write_text(json.dumps([asdict(s) for s in self.views]))
        (directory / "replay.txt").write_text(self.replay() + "\n")


def _mac(namespace: str) -> str:
    argv = ["ip", "netns", "exec", namespace, "cat", "/sys/class/net/eth0/address"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def _kinds(spec: ChaosSpec, topology: Topology) -> list[FaultKind]:
    return [FaultKind(k) for k in spec.kinds] if spec.kinds else list(topology.kinds)


def _cluster(spec: ChaosSpec, topology: Topology, robot: str) -> LocalCluster:
    ids = [f"n{i + 1}" for i in range(topology.nodes)]
    flags = (
        f"--robot={robot}",
        # Keep every command: the checker compares the whole history with the journals.
        "--journal-max-entries=1000000",
        f"--vip={spec.vip}/24",
        "--vip-interface=eth0",
        *topology.node_flags(),
    )
    return LocalCluster(
        topology.nodes,
        hosts=spec.addresses[: topology.members],
        prefixes=[["ip", "netns", "exec", ns] for ns in spec.namespaces[: topology.members]],
        mdns=True,
        witness=topology.witness,
        node_flags=dict.fromkeys(ids, flags),
    )


def run_chaos(spec: ChaosSpec) -> ChaosRun:
    """The whole run; call it inside the client's namespace of a LAN made by lan.run_outside."""
    topology = TOPOLOGIES[spec.topology]
    kinds = _kinds(spec, topology)
    started = time.monotonic()
    robot_address = spec.addresses[topology.members]
    robot_prefix = ["ip", "netns", "exec", spec.namespaces[topology.members]]
    with SimRobotProcess(robot_address, prefix=robot_prefix) as sim:
        cluster = _cluster(spec, topology, sim.spec)
        members = {
            node: Member(spec.namespaces[i], spec.addresses[i])
            for i, node in enumerate(cluster.nodes)
        }
        macs = {_mac(m.namespace): node for node, m in members.items()}
        voting = [cluster.dir / n for n in cluster.nodes if n != "w"]
        disks = StateDisks(voting) if FaultKind.FREEZE_DISK in kinds else None
        try:
            with cluster:
                return _run(spec, topology, kinds, cluster, members, macs, disks, sim, started)
        finally:
            for member in members.values():
                heal_nft(member.namespace)
            if disks is not None:
                disks.close()


def _run(
    spec: ChaosSpec,
    topology: Topology,
    kinds: list[FaultKind],
    cluster: LocalCluster,
    members: dict[str, Member],
    macs: dict[str, str],
    disks: StateDisks | None,
    sim: SimRobotProcess,
    started: float,
) -> ChaosRun:
    cluster.start()
    if cluster.wait_for_primary(60.0) is None:
        raise RuntimeError(f"no primary; logs in {cluster.dir}")
    vip_url = f"http://{spec.vip}:{API_PORT}"
    urls = [vip_url, *(cluster.nodes[n].url for n in cluster.nodes if n != "w")]
    factory = ha_voice_client_factory(3.0, 1.0, urls, cluster.token)
    arp = ArpProbe("eth0", spec.addresses[-1], spec.vip)
    monitor_urls = {n: node.url for n, node in cluster.nodes.items()}
    with Monitor(monitor_urls) as monitor, ClientView(cluster.cluster, macs, arp) as view:
        workload = Workload(urls, factory, seed=spec.seed)
        nemesis = ChaosNemesis(
            cluster,
            spec.faults,
            members=members,
            robot=spec.addresses[topology.members],
            loss_percent=topology.loss_percent,
            disks=disks,
            interval_s=spec.interval_s,
            seed=spec.seed,
            kinds=kinds,
            quiet_s=spec.bound_s + 1.0,
        )
        t0 = time.monotonic()
        workload.start()
        nemesis.start()
        try:
            nemesis.join(timeout_s=spec.faults * (spec.interval_s + 40.0))
        except BaseException:
            workload.stop(drain=False)
            raise
        heal(cluster)
        # The last fault's window: long enough for the bound to be judged.
        time.sleep(spec.bound_s + 1.0)
        end_s = time.monotonic()
        workload.stop(drain=True)
        journals = quiesce(cluster)
    robot_journal = asyncio.run(fetch_journal(sim.host, sim.port, timeout_s=30.0))
    verdict = asyncio.run(fetch_verdict(sim.host, sim.port, timeout_s=30.0))
    report = check(workload.history, journals, robot_journal, verdict, nemesis.faults)
    chaos = check_chaos(
        monitor.samples,
        view.samples,
        nemesis.faults,
        bound_s=spec.bound_s,
        end_s=end_s,
        start_s=t0,
    )
    jepsen = JepsenRun(
        workload.history,
        nemesis.faults,
        journals,
        robot_journal,
        verdict,
        report,
        time.monotonic() - started,
        cluster.dir,
    )
    return ChaosRun(spec, jepsen, monitor.samples, view.samples, chaos, t0)
