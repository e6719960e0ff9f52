"""The core's shell (cluster/runner.py): messages that let another node lead before our lease
would end (TimeoutNow, Resign) wait until the main loop has stopped the robot (the fence).

The robot is commanded from the main loop, the election from the core's thread; without the
fence, a handover's TimeoutNow could leave while the old primary's last robot call is still on
its way out of the main loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random

import pytest

from ha_voice import clock
from ha_voice.cluster.election import Election
from ha_voice.cluster.events import (
    Action,
    Effects,
    HardState,
    Outgoing,
    Role,
    RoleChanged,
    StopRobot,
    Tick,
)
from ha_voice.cluster.membership import Membership
from ha_voice.cluster.protocol import (
    Address,
    Codec,
    Entry,
    Heartbeat,
    Message,
    Resign,
    TimeoutNow,
)
from ha_voice.cluster.runner import CoreRunner, _Request
from ha_voice.cluster.storage import MemoryStore
from ha_voice.cluster.timers import timers_for
from ha_voice.metrics import Metrics

KEY = b"k" * 32


class Wire:
    """Stands in for the UDP socket: what left, decoded as its recipient would."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self._peers = {n: codec(n) for n in "ab"}

    def send(self, data: bytes, address: Address) -> None:
        message = self._peers[address[0]].decode(data, source=("me", 0), now=0.0)
        assert message is not None
        self.sent.append(message)


def codec(node_id: str) -> Codec:
    return Codec(
        cluster="c",
        cluster_key=KEY,
        node_id=node_id,
        boot_id=1,
        takeover_s=0.1,
        nonce=itertools.count(1).__next__,
    )


class Sink:
    """Stands in for the main loop: records stops, answers the fence only when told."""

    def __init__(self) -> None:
        self.halts: list[tuple[str, int]] = []
        self.acted: list[Action] = []

    def halt(self, reason: str, fence: int) -> None:
        self.halts.append((reason, fence))

    def act(self, actions: tuple[Action, ...]) -> None:
        self.acted.extend(actions)

    def applied(self, restore: bytes | None, base: int, committed: tuple[Entry, ...]) -> None:
        pass


def runner() -> tuple[CoreRunner, Wire, Sink]:
    election = Election(
        membership=Membership.from_config("me", ["a", "b"]),
        timers=timers_for("wired"),
        priority=100,
        hard_state=HardState(3),
        rng=random.Random(1),
        now=0.0,
    )
    sink, wire = Sink(), Wire()
    core = CoreRunner(
        election=election,
        codec=codec("me"),
        store=MemoryStore(),
        metrics=Metrics("me"),
        sink=sink,
        static_peers={"a": ("a", 1), "b": ("b", 2)},
        stall_s=2.0,
    )
    core._transport = wire  # type: ignore[assignment]
    return core, wire, sink


def step(core: CoreRunner, effects: Effects) -> None:
    core._apply(_Request(Tick(1.0)), effects, 0)


def test_a_handover_waits_for_the_main_loop_to_stop_the_robot() -> None:
    core, wire, sink = runner()
    handover = Effects(
        send=(Outgoing("a", TimeoutNow("me", 3)), Outgoing("b", Resign("me", 3))),
        actions=(StopRobot("handed over"),),
    )
    step(core, handover)
    assert sink.halts == [("handed over", 1)]
    assert wire.sent == []  # the robot may still be being commanded from the main loop
    core._fence_reached(1)
    assert wire.sent == [TimeoutNow("me", 3), Resign("me", 3)]


def test_other_messages_never_wait_for_the_fence() -> None:
    core, wire, sink = runner()
    step(core, Effects(actions=(StopRobot("stepped down"),)))
    beat = Heartbeat("me", 3, 1.0)
    step(core, Effects(send=(Outgoing("a", beat),)))
    assert wire.sent == [beat]
    assert sink.halts == [("stepped down", 1)]


def test_each_stop_is_its_own_fence_and_only_the_newest_releases() -> None:
    core, wire, sink = runner()
    step(core, Effects(actions=(StopRobot("first"),)))
    step(core, Effects(send=(Outgoing("a", TimeoutNow("me", 3)),), actions=(StopRobot("again"),)))
    assert [fence for _, fence in sink.halts] == [1, 2]
    core._fence_reached(1)  # the older stop is done, not the one that came with the message
    assert wire.sent == []
    core._fence_reached(2)
    assert wire.sent == [TimeoutNow("me", 3)]


def test_the_stop_is_handed_over_at_once_and_the_role_change_after_it() -> None:
    core, _, sink = runner()
    change = RoleChanged(Role.PRIMARY, Role.BACKUP, 3, "lease expired")
    step(core, Effects(actions=(change, StopRobot("lease expired"))))
    assert sink.halts == [("lease expired", 1)]
    assert sink.acted == [change]


# --- a stopping primary keeps its port until its lease ends -------------------------------------


class _Leased:
    """The election, as far as `_outlive_lease` reads it."""

    def __init__(self, lease_expiry: float) -> None:
        self.lease_expiry = lease_expiry


def test_a_stopping_primary_holds_its_port_until_its_lease_has_run_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A closed cluster port is the other nodes' evidence that this process is gone (probe.py):
    while our lease runs, it must not say so."""
    core, _, _ = runner()
    start = clock.monotonic()
    core.election = _Leased(start + 0.3)  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="ha_voice.cluster.runner"):
        asyncio.run(core._outlive_lease())
    assert clock.monotonic() >= start + 0.3  # a lower bound: a sleep never ends early
    assert "port held" in caplog.text


def test_a_stopping_node_without_a_lease_lets_its_port_go_at_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    core, _, _ = runner()
    core.election = _Leased(clock.monotonic() - 1.0)  # type: ignore[assignment]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    with caplog.at_level(logging.WARNING, logger="ha_voice.cluster.runner"):
        asyncio.run(core._outlive_lease())
    assert slept == []
    assert "port held" not in caplog.text
