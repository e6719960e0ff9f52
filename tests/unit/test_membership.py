"""Voters, witnesses, discovered non-voters and the quorum they make."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ha_voice.cluster.membership import Membership


def voters(count: int) -> frozenset[str]:
    return frozenset(f"n{i}" for i in range(1, count + 1))


# --- quorum ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "quorum"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)]
)
def test_quorum_is_a_strict_majority_of_voters(count: int, quorum: int) -> None:
    membership = Membership("n1", voters(count))
    assert membership.quorum == quorum
    ordered = sorted(voters(count))
    assert membership.is_quorum(ordered[:quorum])
    assert not membership.is_quorum(ordered[: quorum - 1])


def test_witness_counts_towards_the_quorum() -> None:
    membership = Membership.from_config("a", ["b"], witness="w")
    assert membership.voters == {"a", "b", "w"}
    assert membership.witnesses == {"w"}
    assert membership.quorum == 2
    assert membership.is_quorum({"a", "w"})
    assert membership.is_quorum({"b", "w"})
    assert not membership.is_quorum({"w"})


def test_two_node_mode_needs_one() -> None:
    membership = Membership.from_config("a", ["b"], two_node=True)
    assert membership.quorum == 1
    assert membership.is_quorum({"a"})
    assert membership.is_quorum({"b"})
    assert not membership.is_quorum(set())
    assert not membership.is_quorum({"stranger"})


def test_two_voters_without_two_node_mode_need_both() -> None:
    membership = Membership.from_config("a", ["b"])
    assert membership.quorum == 2
    assert not membership.is_quorum({"a"})
    assert membership.is_quorum({"a", "b"})


def test_is_quorum_accepts_any_iterable_and_ignores_duplicates() -> None:
    membership = Membership("n1", voters(3))
    assert membership.is_quorum(iter(["n1", "n2"]))
    assert not membership.is_quorum(["n1", "n1", "n1"])


# --- leading --------------------------------------------------------------------------------


def test_witness_cannot_lead() -> None:
    membership = Membership.from_config("a", ["b"], witness="w")
    assert not membership.can_lead("w")
    assert membership.can_lead("a")
    assert membership.can_lead("b")


def test_only_voters_can_lead() -> None:
    membership = Membership.from_config("a", ["b", "c"])
    assert not membership.can_lead("d")
    assert not membership.can_lead("stranger")


NODE = st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h"])


@given(configured=st.frozensets(NODE, min_size=1), present=st.frozensets(NODE))
@settings(max_examples=200, derandomize=True, database=None, deadline=None)
def test_strangers_never_count(configured: frozenset[str], present: frozenset[str]) -> None:
    membership = Membership(min(configured), configured)
    assert membership.is_quorum(present) == membership.is_quorum(present & configured)


# --- invalid constructions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param(
            {"voters": frozenset({"a", "b", "c"}), "two_node": True}, "two_node", id="two_node-3"
        ),
        pytest.param({"voters": frozenset({"a"}), "two_node": True}, "two_node", id="two_node-1"),
        pytest.param(
            {"voters": frozenset({"a", "w"}), "witnesses": frozenset({"w"}), "two_node": True},
            "two_node",
            id="two_node-witness",
        ),
        pytest.param(
            {"voters": frozenset({"a", "b"}), "witnesses": frozenset({"w"})},
            "witness",
            id="witness-not-voter",
        ),
        pytest.param(
            {"voters": frozenset({"w"}), "witnesses": frozenset({"w"})}, "lead", id="only-witness"
        ),
        pytest.param(
            {"voters": frozenset({"v", "w"}), "witnesses": frozenset({"v", "w"})},
            "lead",
            id="only-witnesses",
        ),
    ],
)
def test_invalid_membership_is_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Membership("a", **kwargs)  # type: ignore[arg-type]


def test_from_config_refuses_two_node_with_a_witness() -> None:
    with pytest.raises(ValueError, match="two_node"):
        Membership.from_config("a", ["b"], witness="w", two_node=True)


def test_from_config_refuses_two_node_with_three_nodes() -> None:
    with pytest.raises(ValueError, match="two_node"):
        Membership.from_config("a", ["b", "c"], two_node=True)


# --- rank and peers -------------------------------------------------------------------------


def test_rank_is_the_position_by_id() -> None:
    membership = Membership("b", frozenset({"c", "a", "b", "w"}), frozenset({"w"}))
    assert [membership.rank(node) for node in ("a", "b", "c", "w")] == [0, 1, 2, 3]


def test_rank_does_not_depend_on_the_viewer_or_configuration_order() -> None:
    views = [
        Membership.from_config("a", ["c", "b"]),
        Membership.from_config("c", ["b", "a"]),
        Membership.from_config("b", ["a", "c"]),
    ]
    for node in ("a", "b", "c"):
        assert {view.rank(node) for view in views} == {"abc".index(node)}


def test_strangers_rank_after_every_voter() -> None:
    membership = Membership.from_config("a", ["b", "c"])
    assert membership.rank("0-first-by-id") == 3
    assert membership.rank("stranger") == 3
    assert membership.rank("a") == 0


def test_peers_and_voting_peers() -> None:
    membership = Membership.from_config("a", ["b", "c"], witness="w")
    assert membership.peers == {"b", "c", "w"}
    assert membership.voting_peers == {"b", "c", "w"}


def test_peers_of_a_node_that_does_not_vote() -> None:
    membership = Membership.from_config("watcher", ["a", "b"], self_is_voter=False)
    assert membership.voters == {"a", "b"}
    assert membership.peers == {"a", "b"}
    assert membership.voting_peers == {"a", "b"}
    assert not membership.can_lead("watcher")


def test_single_node_has_no_peers() -> None:
    membership = Membership.from_config("solo", [])
    assert membership.peers == frozenset()
    assert membership.voting_peers == frozenset()
    assert membership.quorum == 1
    assert membership.is_quorum({"solo"})
