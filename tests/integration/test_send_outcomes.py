"""`ha-voice send`: each outcome of the table in its --help, with its exit status and a message
that names the likely cause, against real nodes (LocalCluster) and the real command line.

The nodes have no robot: a command that reaches the robot fails (502), a phrase that needs no
robot ("help") is done. A node that has lost its peers answers 503 until the deadline; the
command then asks the nodes why and says "no quorum", not "is multicast allowed".
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ha_voice.local_cluster import LocalCluster
from ha_voice.send_outcomes import (
    DONE,
    FAILED,
    NO_PRIMARY,
    NO_QUORUM,
    OUTCOMES,
    REFUSED,
    REJECTED,
    UNAUTHORIZED,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3) as running:
        running.start()
        assert running.wait_for_primary(30.0) is not None
        yield running


def _send(
    *argv: str, token: str | None, deadline_s: float = 5.0
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")}
    env["HA_VOICE_CONFIG"] = os.devnull
    if token is not None:
        env["HA_VOICE_TOKEN"] = token
    command = [sys.executable, "-m", "ha_voice", "send", "--deadline", str(deadline_s), *argv]
    return subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def _primary_url(cluster: LocalCluster) -> str:
    found = cluster.wait_for_primary(10.0)
    assert found is not None
    return cluster.nodes[found[0]].url


def test_help_lists_every_outcome_with_its_exit_status() -> None:
    result = _send("--help", token=None)
    assert result.returncode == 0
    for outcome in OUTCOMES:
        assert f"  {outcome.exit_code}  {outcome.name} " in result.stdout


def test_done(cluster: LocalCluster) -> None:
    result = _send("--url", _primary_url(cluster), "help", token=cluster.token)
    assert result.returncode == DONE.exit_code, result.stderr
    assert result.stderr == ""


def test_failed_names_the_robot(cluster: LocalCluster) -> None:
    result = _send("--url", _primary_url(cluster), "--action", "stand", token=cluster.token)
    assert result.returncode == FAILED.exit_code
    assert result.stdout.startswith("failed: stand")
    assert "ha-voice: failed (exit 1): the robot refused or failed it" in result.stderr


def test_rejected_when_not_understood(cluster: LocalCluster) -> None:
    result = _send("--url", _primary_url(cluster), "zing een liedje", token=cluster.token)
    assert result.returncode == REJECTED.exit_code
    assert result.stdout.startswith("not understood: 'zing een liedje'")
    assert "rejected (exit 5)" in result.stderr


def test_unauthorized_says_how_to_give_a_token(cluster: LocalCluster) -> None:
    result = _send("--url", _primary_url(cluster), "--action", "stand", token="not-a-token")
    assert result.returncode == UNAUTHORIZED.exit_code
    assert "unauthorized (exit 8): HTTP 401" in result.stderr
    assert "--token-file FILE or $HA_VOICE_TOKEN" in result.stderr


def test_refused_when_a_key_is_reused_for_another_command(cluster: LocalCluster) -> None:
    url, key = _primary_url(cluster), str(uuid.uuid4())
    first = _send("--url", url, "--action", "stand", "--key", key, token=cluster.token)
    assert first.returncode == FAILED.exit_code
    again = _send("--url", url, "--action", "sit", "--key", key, token=cluster.token)
    assert again.returncode == REFUSED.exit_code
    assert "refused (exit 9): HTTP 409" in again.stderr
    assert key in again.stderr


def test_no_primary_when_nothing_answers_at_the_url() -> None:
    with socket.socket() as held:  # bound, never listening: connecting is refused at once
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}"
        result = _send("--url", url, "stop", token="x" * 32, deadline_s=1.0)
    assert result.returncode == NO_PRIMARY.exit_code
    assert f"no node answers at {url}: is ha-voice running there?" in result.stderr
    assert "retry with --key" in result.stderr


def test_no_primary_when_mdns_finds_no_node_of_the_cluster() -> None:
    cluster = f"absent-{uuid.uuid4().hex[:8]}"
    result = _send("--cluster", cluster, "stop", token="x" * 32, deadline_s=2.0)
    assert result.returncode == NO_PRIMARY.exit_code
    assert f"no node of cluster {cluster!r} answers mDNS" in result.stderr


def test_no_quorum_is_named_with_the_peers_not_heard() -> None:
    with LocalCluster(3) as lonely:
        lonely.start()
        found = lonely.wait_for_primary(30.0)
        assert found is not None
        alive, *gone = sorted(lonely.nodes)
        for node_id in gone:
            lonely.kill(node_id)
        url = lonely.nodes[alive].url
        result = _send("--url", url, "--action", "stand", token=lonely.token, deadline_s=3.0)
    assert result.returncode == NO_QUORUM.exit_code, result.stderr
    assert f"{alive} hears 0 of its 2 peers ({', '.join(gone)} not heard)" in result.stderr
    assert "a primary needs 2 of 3 voters" in result.stderr
    assert "multicast" not in result.stderr


def test_no_quorum_found_by_mdns_is_not_called_a_multicast_problem() -> None:
    with LocalCluster(3, mdns=True, static_peers=False) as lonely:
        lonely.start()
        found = lonely.wait_for_primary(30.0)
        assert found is not None
        alive, *gone = sorted(lonely.nodes)
        for node_id in gone:
            lonely.kill(node_id)
        result = _send(
            "--cluster", lonely.cluster, "--action", "stand", token=lonely.token, deadline_s=3.0
        )
    assert result.returncode == NO_QUORUM.exit_code, result.stderr
    assert f"{alive} hears 0 of its 2 peers" in result.stderr
    assert "multicast" not in result.stderr
