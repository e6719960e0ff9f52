"""The chaos nemesis: tests/jepsen.py's process faults, plus faults made with nftables inside the
members' namespaces, fsfreeze of a loop-mounted state directory, and a busy loop on the
primary's CPU. One fault at a time, each healed before the next, in a seeded random schedule.

nftables rules live in two tables per namespace (`inet chaos` for drops, `ip chaos_dup` for the
`dup` statement, which the inet family lacks); healing deletes both. This kernel has no netem,
so there is no delay or reordering here: those stay in the simulator (tests/sim).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ha_voice.local_cluster import LocalCluster
from tests.jepsen import Fault, FaultKind, Nemesis, the_primary

__all__ = ["ChaosNemesis", "Member", "StateDisks", "nft"]


@dataclass(frozen=True)
class Member:
    """A cluster member's namespace and address."""

    namespace: str
    address: str


def nft(namespace: str, script: str) -> None:
    """Run an nft script inside `namespace`; CalledProcessError with nft's words if refused."""
    subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "-f", "-"],
        input=script,
        text=True,
        capture_output=True,
        check=True,
        timeout=10,
    )


def heal_nft(namespace: str) -> None:
    """Delete the chaos tables in `namespace` (there or not)."""
    for table in ("inet chaos", "ip chaos_dup"):
        subprocess.run(
            ["ip", "netns", "exec", namespace, "nft", "delete", "table", *table.split()],
            capture_output=True,
            check=False,
            timeout=10,
        )


def _drops(addresses: Sequence[str], *, inbound: bool, outbound: bool, percent: int = 100) -> str:
    """The `inet chaos` table dropping packets from/to `addresses` (all, or `percent` %)."""
    peers = "{ " + ", ".join(addresses) + " }"
    chance = f"numgen random mod 100 < {percent} " if percent < 100 else ""
    rules = {
        "input": f'iifname "eth0" ip saddr {peers} {chance}drop' if inbound else "",
        "output": f'oifname "eth0" ip daddr {peers} {chance}drop' if outbound else "",
    }
    chains = "".join(
        f"  chain {hook} {{ type filter hook {hook} priority -10; policy accept;\n"
        f"    {rule}\n  }}\n"
        for hook, rule in rules.items()
    )
    return f"table inet chaos {{\n{chains}}}\n"


def _duplicates(addresses: Sequence[str], percent: int) -> str:
    """The `ip chaos_dup` table sending a second copy of `percent` % of packets to `addresses`."""
    peers = "{ " + ", ".join(addresses) + " }"
    return (
        "table ip chaos_dup {\n  chain output { type filter hook output priority 0; "
        "policy accept;\n"
        f'    oifname "eth0" ip daddr {peers} numgen random mod 100 < {percent} '
        'dup to ip daddr device "eth0"\n  }\n}\n'
    )


class StateDisks:
    """Each voting node's state directory on its own small loop-mounted ext4, to fsfreeze.

    Mounted in this process's mount namespace, before the nodes start (they inherit it);
    `close()` thaws, unmounts and frees the loop devices.
    """

    SIZE_MB = 64

    def __init__(self, directories: Sequence[Path]) -> None:
        self._images = Path(tempfile.mkdtemp(prefix="hv-chaos-disks-"))
        self.mounted: list[Path] = []
        try:
            for directory in directories:
                image = self._images / f"{directory.name}.img"
                with image.open("wb") as file:
                    file.truncate(self.SIZE_MB << 20)
                subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, timeout=60)
                directory.mkdir(parents=True, exist_ok=True)
                subprocess.run(["mount", "-o", "loop", str(image), str(directory)], check=True)
                self.mounted.append(directory)
        except BaseException:
            self.close()
            raise

    def freeze(self, directory: Path, frozen: bool) -> None:
        subprocess.run(
            ["fsfreeze", "--freeze" if frozen else "--unfreeze", str(directory)],
            check=True,
            timeout=30,
        )

    def close(self) -> None:
        for directory in self.mounted:
            subprocess.run(
                ["fsfreeze", "--unfreeze", str(directory)], capture_output=True, check=False
            )
            subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)
        self.mounted.clear()
        for image in self._images.glob("*.img"):
            image.unlink()
        with contextlib.suppress(OSError):
            self._images.rmdir()


_BUSY_LOOP = "while True: pass"


@contextlib.contextmanager
def cpu_hog(namespace: str, pid: int) -> Iterator[int]:
    """A busy loop in `namespace` pinned to the CPU process `pid` last ran on; yields the CPU."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = int(fields[36])  # field 39 of stat(5), counted after the command's ")"
    hog = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            namespace,
            "taskset",
            "-c",
            str(cpu),
            sys.executable,
            "-c",
            _BUSY_LOOP,
        ]
    )
    try:
        yield cpu
    finally:
        hog.kill()
        hog.wait(10)


class ChaosNemesis(Nemesis):
    """`Nemesis` with the chaos faults; `members` maps node ids (the witness's "w" too) to where
    they run, `robot` is the sim robot's address, `disks` the frozen-disk mounts (or None)."""

    def __init__(
        self,
        cluster: LocalCluster,
        faults: int,
        *,
        members: Mapping[str, Member],
        robot: str,
        loss_percent: tuple[int, int],
        disks: StateDisks | None = None,
        interval_s: float = 2.0,
        seed: int = 0,
        kinds: Sequence[FaultKind] = (),
        hold_range_s: tuple[float, float] = (1.0, 3.0),
        quiet_s: float = 3.0,
    ) -> None:
        super().__init__(
            cluster,
            faults,
            interval_s=interval_s,
            seed=seed,
            kinds=kinds,
            # Past the election timeout (0.5 s in the wired profile), so that others take over.
            pause_range_s=(0.8, 2.0),
        )
        self._members = dict(members)
        self._robot = robot
        self._loss_percent = loss_percent
        self._disks = disks
        self._hold_range_s = hold_range_s
        self._quiet_s = quiet_s

    def _inflict(self, kind: FaultKind) -> Fault | None:
        """Cause one fault and heal it, then leave the cluster alone for `quiet_s`: the window
        in which the checker judges how it recovered."""
        fault = self._inflict_one(kind)
        if fault is None:
            return None
        if kind in _RESTARTS:
            fault = replace(fault, healed_s=self._answering(fault.target))
        time.sleep(self._quiet_s)
        return fault

    def _answering(self, node: str, timeout_s: float = 30.0) -> float:
        """When restarted `node` answers its API again: a restart heals then, not when it is
        spawned (a SIGKILLed daemon can drop its stale floating IP only once it runs again)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._cluster.nodes[node].cluster() is not None:
                return time.monotonic()
            time.sleep(0.02)
        raise TimeoutError(f"restarted {node} did not answer in {timeout_s} s")

    def _inflict_one(self, kind: FaultKind) -> Fault | None:
        if kind not in _CHAOS_KINDS:
            return super()._inflict(kind)
        primary = the_primary(self._cluster, timeout_s=10.0)
        if primary is None:
            return None
        at_s = time.monotonic()
        target, detail = _CHAOS_KINDS[kind](self, primary)
        return Fault(kind, target, at_s, time.monotonic(), detail)

    def _hold(self) -> None:
        time.sleep(self._random.uniform(*self._hold_range_s))

    def _others(self, node: str) -> list[str]:
        return [m.address for n, m in self._members.items() if n != node]

    def _cut(self, node: str, addresses: Sequence[str], *, inbound: bool, outbound: bool) -> None:
        namespace = self._members[node].namespace
        nft(namespace, _drops(addresses, inbound=inbound, outbound=outbound))
        try:
            self._hold()
        finally:
            heal_nft(namespace)

    def _kill_any(self, primary: str) -> tuple[str, str]:
        target = self._random.choice(sorted(self._cluster.nodes))
        self._cluster.kill(target)
        time.sleep(self._restart_after_s)
        self._cluster.nodes[target].start()
        return target, "primary" if target == primary else "backup"

    def _isolate_primary(self, primary: str) -> tuple[str, str]:
        self._cut(primary, self._others(primary), inbound=True, outbound=True)
        return primary, ""

    def _cut_backup(self, primary: str) -> tuple[str, str]:
        target = self._random.choice(sorted(n for n in self._members if n != primary))
        self._cut(target, self._others(target), inbound=True, outbound=True)
        return target, ""

    def _one_way(self, primary: str) -> tuple[str, str]:
        direction = self._random.choice(("in", "out"))
        inbound = direction == "in"
        self._cut(primary, self._others(primary), inbound=inbound, outbound=not inbound)
        return primary, direction

    def _cut_robot(self, primary: str) -> tuple[str, str]:
        self._cut(primary, [self._robot], inbound=True, outbound=True)
        return primary, ""

    def _loss_dup(self, primary: str) -> tuple[str, str]:
        loss = self._random.randint(*self._loss_percent)
        dup = self._random.randint(*self._loss_percent)
        addresses = [m.address for m in self._members.values()]
        try:
            for member in self._members.values():
                nft(member.namespace, _drops(addresses, inbound=True, outbound=False, percent=loss))
                nft(member.namespace, _duplicates(addresses, dup))
            self._hold()
        finally:
            for member in self._members.values():
                heal_nft(member.namespace)
        return "all", f"loss {loss}% dup {dup}%"

    def _freeze_disk(self, primary: str) -> tuple[str, str]:
        assert self._disks is not None
        directory = self._random.choice(self._disks.mounted)
        self._disks.freeze(directory, True)
        try:
            self._hold()
        finally:
            self._disks.freeze(directory, False)
        return directory.name, "primary" if directory.name == primary else "backup"

    def _cpu_hog(self, primary: str) -> tuple[str, str]:
        process = self._cluster.nodes[primary].process
        assert process is not None
        with cpu_hog(self._members[primary].namespace, process.pid) as cpu:
            self._hold()
        return primary, f"cpu {cpu}"


_RESTARTS = frozenset(
    {FaultKind.KILL_PRIMARY, FaultKind.KILL_BACKUP, FaultKind.KILL_ANY, FaultKind.RESTART_PRIMARY}
)
_CHAOS_KINDS = {
    FaultKind.KILL_ANY: ChaosNemesis._kill_any,
    FaultKind.ISOLATE_PRIMARY: ChaosNemesis._isolate_primary,
    FaultKind.CUT_BACKUP: ChaosNemesis._cut_backup,
    FaultKind.ONE_WAY: ChaosNemesis._one_way,
    FaultKind.CUT_ROBOT: ChaosNemesis._cut_robot,
    FaultKind.LOSS_DUP: ChaosNemesis._loss_dup,
    FaultKind.FREEZE_DISK: ChaosNemesis._freeze_disk,
    FaultKind.CPU_HOG: ChaosNemesis._cpu_hog,
}
