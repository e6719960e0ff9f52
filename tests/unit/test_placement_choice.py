"""The choice of the node that does a speech job: least loaded ready node, this node on a tie."""

from __future__ import annotations

import pytest

from ha_voice.cluster.events import Role
from ha_voice.cluster.membership import Membership
from ha_voice.cluster.protocol import Load
from ha_voice.cluster.view import NodeView, PeerInfo
from ha_voice.voice.placement import FRESH_S, choose, peer_loads

IDLE = Load(ready=True, workers=1)


def busy(jobs: int, *, workers: int = 1, cpu: float = 0.0) -> Load:
    return Load(
        ready=True,
        workers=workers,
        running=min(jobs, workers),
        queued=max(0, jobs - workers),
        cpu=cpu,
    )


def test_the_least_loaded_ready_node_comes_first() -> None:
    loads = {"a": busy(3), "b": busy(1), "c": busy(2)}
    assert choose("a", loads) == ["b", "c", "a"]


def test_on_a_tie_this_node_comes_first_then_the_others_by_name() -> None:
    loads = {"c": busy(1), "a": busy(1), "b": busy(1)}
    assert choose("b", loads) == ["b", "a", "c"]
    assert choose("x", {"c": IDLE, "a": IDLE}) == ["a", "c"]


def test_a_node_not_ready_is_never_chosen() -> None:
    loads = {"a": busy(5), "b": Load(ready=False, workers=4), "c": busy(9)}
    assert choose("a", loads) == ["a", "c"]
    assert choose("a", {"a": Load(ready=False), "b": Load(ready=False)}) == []


def test_jobs_are_counted_per_worker() -> None:
    loads = {"a": busy(2), "b": busy(3, workers=4)}
    assert choose("a", loads) == ["b", "a"]
    assert choose("a", {"a": busy(1), "b": busy(2, workers=2)}) == ["a", "b"]  # a tie


@pytest.mark.parametrize(
    ("own_cpu", "peer_cpu", "first"),
    [(0.9, 0.1, "b"), (0.30, 0.26, "a"), (0.1, 0.9, "a"), (0.74, 0.51, "a"), (0.76, 0.74, "b")],
)
def test_cpu_breaks_a_tie_of_jobs_in_quarters(own_cpu: float, peer_cpu: float, first: str) -> None:
    loads = {"a": busy(1, cpu=own_cpu), "b": busy(1, cpu=peer_cpu)}
    assert choose("a", loads)[0] == first


def test_fewer_jobs_win_over_less_cpu() -> None:
    assert choose("a", {"a": busy(2, cpu=0.0), "b": busy(1, cpu=1.0)}) == ["b", "a"]


def test_jobs_handed_to_a_peer_count_until_its_report_shows_them() -> None:
    loads = {"a": busy(1), "b": IDLE, "c": IDLE}
    assert choose("a", loads, handed={"b": 2}) == ["c", "a", "b"]
    assert choose("a", {"a": busy(1), "b": busy(3)}, handed={"b": 2}) == ["a", "b"]


def view(peers: dict[str, PeerInfo], members: tuple[str, ...] = ("b", "c", "d")) -> NodeView:
    """Node a's view as a backup of members `members`, with `peers` as heard."""
    return NodeView(
        node_id="a",
        role=Role.BACKUP,
        term=1,
        leader=None,
        lease_expiry=float("-inf"),
        accepting=False,
        eligible=True,
        fault_reason="",
        robot_reachable=True,
        membership=Membership.from_config("a", list(members), None),
        peers=peers,
    )


def test_only_loads_reported_lately_are_believed() -> None:
    now = 100.0
    peers = {
        "b": PeerInfo("b", load=IDLE, load_heard_at=now - FRESH_S),
        "c": PeerInfo("c", load=IDLE, load_heard_at=now - FRESH_S - 0.01),
        "d": PeerInfo("d", last_heard_at=now),  # heard, but no load (malformed or none sent)
    }
    assert peer_loads(view(peers), now) == {"b": IDLE}
