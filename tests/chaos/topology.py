"""The chaos suite's topologies and the LAN each one runs on (addresses, namespaces, flags)."""

from __future__ import annotations

from dataclasses import dataclass

from tests.jepsen import PROCESS_FAULTS, FaultKind

__all__ = ["TOPOLOGIES", "Topology"]

_NETWORK_FAULTS = (
    FaultKind.ISOLATE_PRIMARY,
    FaultKind.CUT_BACKUP,
    FaultKind.ONE_WAY,
    FaultKind.LOSS_DUP,
)
_HOST_FAULTS = (
    FaultKind.KILL_ANY,
    FaultKind.CUT_ROBOT,
    FaultKind.FREEZE_DISK,
    FaultKind.CPU_HOG,
)


@dataclass(frozen=True)
class Topology:
    """Which members run (`nodes` voting daemons, maybe a witness) and which faults suit them."""

    name: str
    nodes: int
    witness: bool
    two_node: bool
    kinds: tuple[FaultKind, ...]
    loss_percent: tuple[int, int]  # the range LOSS_DUP draws its drop rate from

    @property
    def members(self) -> int:
        """Namespaces for the cluster: the nodes and the witness."""
        return self.nodes + (1 if self.witness else 0)

    def node_flags(self) -> tuple[str, ...]:
        """Flags of every voting node (not the witness) beyond the harness's own."""
        return ("--two-node",) if self.two_node else ()


TOPOLOGIES = {
    topology.name: topology
    for topology in (
        Topology(
            "three", 3, False, False, (*PROCESS_FAULTS, *_NETWORK_FAULTS, *_HOST_FAULTS), (5, 20)
        ),
        Topology(
            "witness", 2, True, False, (*PROCESS_FAULTS, *_NETWORK_FAULTS, *_HOST_FAULTS), (5, 20)
        ),
        # Two nodes that cannot hear each other both lead while they reach the robot: the
        # documented split-brain risk of two_node, not a fault to judge. So no partition between
        # them, and loss low enough that a window of lost heartbeats stays rare.
        Topology(
            "two_node",
            2,
            False,
            True,
            (
                *PROCESS_FAULTS,
                FaultKind.KILL_ANY,
                FaultKind.CUT_ROBOT,
                FaultKind.FREEZE_DISK,
                FaultKind.CPU_HOG,
            ),
            (2, 5),
        ),
    )
}
