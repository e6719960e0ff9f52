"""The cluster key rotated on a running 3-node cluster, one node restart at a time, exactly as
docs/operations.md ("Rotating the cluster key") says: accept the new key, sign with it, forget
the old one. Through all nine restarts no datagram is dropped for its MAC, no primary loses its
lease, a backup's restart leaves the primary and its term alone, the primary's restart is one
handover, and every forward (sealed with whichever key the backup signs with) is believed.
A node that skips a pass is seen at once: the other nodes drop its datagrams (`bad_mac`)."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from ha_voice.keygen import KeygenRequest, keygen
from ha_voice.local_cluster import LocalCluster

BOUND_S = 20.0
_KEY_FLAGS = ("--cluster-key-file=", "--cluster-key-accepted-file=")


def counter(cluster: LocalCluster, node: str, name: str) -> float:
    response = cluster.nodes[node].get("/metrics", timeout_s=5.0)
    assert response is not None
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", response.text, re.M))


def bad_macs(cluster: LocalCluster, node: str) -> float:
    response = cluster.nodes[node].get("/metrics", timeout_s=5.0)
    assert response is not None
    found = re.search(
        r'^ha_voice_cluster_packets_dropped_total\{reason="bad_mac"\} (\S+)$', response.text, re.M
    )
    assert found is not None
    return float(found[1])


def whole(cluster: LocalCluster) -> tuple[str, int]:
    """Wait until a primary hears every other node ack; (primary, term)."""
    found = cluster.wait_for_primary(BOUND_S)
    assert found is not None
    primary = found[0]
    others = set(cluster.nodes) - {primary}

    def acked(view: dict[str, object]) -> bool:
        members = view["members"]
        assert isinstance(members, list)
        roles = {m["node"]: m["role"] for m in members}
        return view["role"] == "primary" and all(roles.get(n) == "backup" for n in others)

    view = cluster.wait_for(primary, acked, BOUND_S)
    assert view is not None, f"{primary} does not hear every backup"
    term = view["term"]
    assert isinstance(term, int)
    return primary, term


def nothing_lost(cluster: LocalCluster) -> None:
    """Since each running node started: no datagram refused for its MAC, no lease lost."""
    for node in cluster.nodes:
        assert bad_macs(cluster, node) == 0, node
        assert counter(cluster, node, "ha_voice_lease_renew_failures_total") == 0, node


def restart(cluster: LocalCluster, node_id: str, key: Path, accepted: Path | None) -> None:
    """Stop `node_id` as systemd would (SIGTERM), then start it with these key files."""
    node = cluster.nodes[node_id]
    node.signal(signal.SIGTERM)
    assert node.wait(BOUND_S) == 0
    node.argv = [arg for arg in node.argv if not arg.startswith(_KEY_FLAGS)]
    node.argv.append(f"--cluster-key-file={key}")
    if accepted is not None:
        node.argv.append(f"--cluster-key-accepted-file={accepted}")
    node.start()
    # The cluster socket serves before the HTTP API does: wait for both, as systemd's READY.
    deadline = time.monotonic() + BOUND_S
    while node.get("/health") is None:
        assert time.monotonic() < deadline, f"{node_id}'s API did not come up"
        time.sleep(0.02)


def forwards_are_believed(cluster: LocalCluster, primary: str) -> None:
    for backup in set(cluster.nodes) - {primary}:
        answer = cluster.nodes[backup].post("/api/settings", {"listening": True})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-ha-voice-forwarded-by"] == backup


def rotate_pass(cluster: LocalCluster, key: Path, accepted: Path | None) -> None:
    """Restart every node with these keys: the backups first, then the primary."""
    primary, term = whole(cluster)
    for backup in sorted(set(cluster.nodes) - {primary}):
        nothing_lost(cluster)
        restart(cluster, backup, key, accepted)
        assert whole(cluster) == (primary, term)  # a backup's restart: nothing changes
        forwards_are_believed(cluster, primary)
    nothing_lost(cluster)
    restart(cluster, primary, key, accepted)
    new_primary, new_term = whole(cluster)
    assert new_primary != primary
    assert new_term == term + 1  # the primary's restart: one handover
    forwards_are_believed(cluster, new_primary)
    nothing_lost(cluster)


def test_the_key_is_rotated_node_by_node_without_losing_the_primary() -> None:
    with LocalCluster(3) as cluster:
        cluster.start()
        old = cluster.key_file
        new = cluster.dir / "cluster.key.new"
        keygen(KeygenRequest(key_file=new, token_file=None))
        rotate_pass(cluster, old, new)  # accept the new key
        rotate_pass(cluster, new, old)  # sign with it
        rotate_pass(cluster, new, None)  # forget the old one
        for node in cluster.nodes.values():
            assert f"--cluster-key-file={new}" in node.argv
            assert not any(arg.startswith(_KEY_FLAGS[1]) for arg in node.argv)

        # A node that jumps ahead (a key nobody else accepts) is dropped and counted at once.
        primary, _term = whole(cluster)
        stray = cluster.dir / "stray.key"
        keygen(KeygenRequest(key_file=stray, token_file=None))
        backup = sorted(set(cluster.nodes) - {primary})[0]
        restart(cluster, backup, stray, new)
        seen = cluster.wait_for(primary, lambda view: bad_macs(cluster, primary) > 0, BOUND_S)
        assert seen is not None
