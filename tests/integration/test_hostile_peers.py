"""Datagrams signed with the cluster key that a member must still refuse, and a core that fails.

Whoever holds the key (a retired node, a second cluster set up with the same key and name, an
attacker who read the key file) can sign anything. What a node takes from them is bounded: no
integer it cannot store, nothing from a sender that is not a configured member. And when the
core meets something that can only be a bug, the process ends with its traceback and a non-zero
status instead of living on without a core.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from ha_voice.cluster.protocol import (
    MAX_WIRE_INT,
    Append,
    Codec,
    DecodeError,
    Heartbeat,
    LogPosition,
    Message,
    PreVoteRequest,
    Resign,
    TimeoutNow,
    VoteRequest,
)
from ha_voice.local_cluster import LocalCluster
from ha_voice.supervise import EXIT_FAILED

BIG = 2**62  # one past what the wire accepts (SQLite stores 2**63 - 1; the rest is headroom)


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3) as running:
        running.start()
        assert running.wait_for_primary(20.0) is not None
        yield running


def _forge(cluster: LocalCluster, sender: str, to: str, messages: list[Message]) -> None:
    """Sign `messages` as `sender` with the cluster's own key and send them to node `to`: in
    the boot of `sender` if it runs (its boot id is public: in clear in every datagram), with
    sequence numbers far past its own; else as a new boot that answers its challenge."""
    view = cluster.nodes[sender].cluster() if sender in cluster.nodes else None
    codec = Codec(
        cluster=cluster.cluster,
        cluster_key=cluster.key_file.read_bytes(),
        node_id=sender,
        boot_id=secrets.randbits(64) if view is None else int(view["boot"], 16),
        takeover_s=1.0,
        nonce=lambda: secrets.randbits(64),
    )
    codec._seq = 2**40  # past every sequence number the real process will use in this test
    target = cluster.nodes[to]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        for message in messages:
            sock.sendto(codec.encode(to, message), (target.host, target.cluster_port))
        if view is not None or sender not in cluster.nodes:
            return
        _answer_challenges(codec, sock, 0.5)
        time.sleep(1.0)  # the old boot leaves its probe unanswered; ours is admitted
        for message in messages:
            sock.sendto(codec.encode(to, message), (target.host, target.cluster_port))


def _answer_challenges(codec: Codec, sock: socket.socket, for_s: float) -> None:
    deadline = time.monotonic() + for_s
    sock.settimeout(0.05)
    while time.monotonic() < deadline:
        try:
            data, source = sock.recvfrom(2048)
        except TimeoutError:
            continue
        with contextlib.suppress(DecodeError):
            codec.decode(data, source=source, now=time.monotonic())
        for reply, to in codec.take_outgoing():
            sock.sendto(reply, to)


def _counter(cluster: LocalCluster, node_id: str, reason: str) -> float:
    response = cluster.nodes[node_id].get("/metrics")
    assert response is not None
    pattern = rf'^ha_voice_cluster_packets_dropped_total{{reason="{reason}"}} (\S+)$'
    found = re.search(pattern, response.text, re.M)
    return float(found.group(1)) if found else 0.0


def _wait_for_drops(cluster: LocalCluster, node_id: str, reason: str, count: float) -> float:
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        seen = _counter(cluster, node_id, reason)
        if seen >= count:
            return seen
        time.sleep(0.05)
    return _counter(cluster, node_id, reason)


def _terms(cluster: LocalCluster) -> dict[str, int]:
    views = {n: cluster.nodes[n].cluster() for n in cluster.nodes}
    return {n: view["term"] for n, view in views.items() if view is not None}


def test_integers_a_node_cannot_store_are_dropped_as_malformed(cluster: LocalCluster) -> None:
    """One heartbeat with term 2**63 once killed the core of a living process; now: a drop."""
    terms = _terms(cluster)
    (primary,) = cluster.primaries()
    backup = next(n for n in cluster.nodes if n != primary)
    hostile: list[Message] = [
        Heartbeat(primary, term=BIG, sent_at=1.0),
        Heartbeat(primary, term=1, sent_at=1.0, commit=BIG),
        Heartbeat(primary, term=1, sent_at=1.0, log=LogPosition(BIG, 1)),
        VoteRequest(primary, term=BIG),
        PreVoteRequest(primary, term=5, log=LogPosition(1, BIG)),
        Append(primary, term=BIG, prev=LogPosition(), commit=0),
        TimeoutNow(primary, term=BIG),
        Resign(primary, term=BIG),
    ]
    before = _counter(cluster, backup, "malformed")
    _forge(cluster, primary, backup, hostile)
    assert _wait_for_drops(cluster, backup, "malformed", before + len(hostile)) == before + len(
        hostile
    )
    time.sleep(0.5)
    assert cluster.primaries() == [primary]
    assert _terms(cluster) == terms


def test_a_stranger_with_the_key_moves_nobody(cluster: LocalCluster) -> None:
    """A retired node (or a second cluster on the same key) at a higher term: dropped, and it
    never appears among the members."""
    terms = _terms(cluster)
    (primary,) = cluster.primaries()
    term = max(terms.values()) + 10
    strangers: list[Message] = [
        Heartbeat("retired", term=term, sent_at=1.0),
        VoteRequest("retired", term=term, log=LogPosition(term, 10**6), transfer=True),
        PreVoteRequest("retired", term=term, log=LogPosition(term, 10**6)),
        TimeoutNow("retired", term=term),
        Resign("retired", term=term),
        Append("retired", term=term, prev=LogPosition(), commit=0),
    ]
    for node_id in cluster.nodes:
        before = _counter(cluster, node_id, "not_member")
        _forge(cluster, "retired", node_id, strangers)
        assert _wait_for_drops(cluster, node_id, "not_member", before + 6) == before + 6
    time.sleep(0.5)
    assert cluster.primaries() == [primary]
    assert _terms(cluster) == terms
    for node_id in cluster.nodes:
        view = cluster.nodes[node_id].cluster()
        assert view is not None
        assert sorted(member["node"] for member in view["members"]) == ["n1", "n2", "n3"]


def test_a_core_that_meets_the_impossible_exits_loudly(cluster: LocalCluster) -> None:
    """A heartbeat of the primary's own term from another member means two primaries in one
    term: a broken invariant. The process ends (70) with the traceback in its log, instead of
    living on with a dead core, and the others elect a new primary."""
    (primary,) = cluster.primaries()
    view = cluster.nodes[primary].cluster()
    assert view is not None
    impostor = next(n for n in cluster.nodes if n != primary)
    _forge(cluster, impostor, primary, [Heartbeat(impostor, term=view["term"], sent_at=1.0)])
    assert cluster.nodes[primary].wait(10.0) == EXIT_FAILED
    log = cluster.nodes[primary].log_path.read_text()
    assert "the cluster core's election loop failed" in log
    assert "Traceback" in log
    assert "two primaries in term" in log
    assert cluster.wait_for_primary(10.0, exclude=primary) is not None


def test_a_term_no_election_could_reach_is_not_believed(cluster: LocalCluster) -> None:
    """The largest term the wire allows, from a member: once adopted by every node, their next
    pre-vote no longer fitted the wire, and the cluster could never elect again (durably: the
    term is on disk). Now such a jump is dropped, counted, and the cluster carries on. (Sent in
    the name of a member that is down: forging a live one's datagrams would also cut it off,
    as any holder of the key can.)"""
    (primary,) = cluster.primaries()
    silent = next(n for n in cluster.nodes if n != primary)
    cluster.kill(silent, signal.SIGKILL)
    time.sleep(0.2)
    terms = _terms(cluster)
    for node_id in cluster.nodes:
        if node_id != silent:
            _forge(cluster, silent, node_id, [Heartbeat(silent, term=MAX_WIRE_INT, sent_at=1.0)])
    time.sleep(0.5)
    assert _terms(cluster) == terms
    for node_id in cluster.nodes:
        if node_id != silent:
            response = cluster.nodes[node_id].get("/metrics")
            assert response is not None
            assert "ha_voice_implausible_terms_total 1.0" in response.text
    cluster.nodes[silent].start()
    (term,) = set(terms.values())
    assert cluster.wait_for(silent, lambda view: view["leader"] == primary, 10.0) is not None
    # Elections still count on from the real term.
    answer = cluster.nodes[primary].post("/cluster/step-down", {})
    assert answer.status_code == 202, answer.text
    assert cluster.wait_for(primary, lambda view: view["term"] == term + 1, 10.0) is not None


def test_a_backup_the_primary_no_longer_hears_says_so(cluster: LocalCluster) -> None:
    """The primary drops a backup's datagrams (here: a datagram forged in the backup's boot
    with a sequence number far past its own, so its real ones are replays there): the backup
    still hears heartbeats, but is no longer counted. It used to call itself healthy; now
    `/health` and `/cluster/replica` say it is not."""
    (primary,) = cluster.primaries()
    backup = next(n for n in cluster.nodes if n != primary)
    assert cluster.nodes[backup].status_code("/cluster/replica", 2.0) == 200
    _forge(cluster, backup, primary, [Resign(backup, 0)])
    deadline = time.monotonic() + 10.0
    while True:
        response = cluster.nodes[backup].get("/health")
        assert response is not None
        health = response.json()
        if health["status"] == "degraded":
            break
        assert time.monotonic() < deadline, health
        time.sleep(0.1)
    assert f"the primary {primary} does not hear this node" in health["fault_reason"]
    assert health["role"] == "backup"
    assert cluster.nodes[backup].status_code("/cluster/replica", 2.0) == 503
    assert _counter(cluster, primary, "replay") > 0
