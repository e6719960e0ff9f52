"""Real daemons configured in each way the authentication allows, and refusing the ways it does
not: trusted networks for the seed's client, nothing configured, token files that differ
between nodes, secrets that group or others may read, and the CLI's ways to send a token."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ha_voice.client import HAVoiceClient, JetsonVoiceClient, RequestError
from ha_voice.local_cluster import LocalCluster, LocalNode, SimRobotProcess
from ha_voice.tokens import new_token

START_S = 20.0


def _primary_and_backup(cluster: LocalCluster) -> tuple[str, str]:
    found = cluster.wait_for_primary(START_S)
    assert found is not None
    backup = next(n for n in cluster.nodes if n != found[0])
    assert cluster.wait_for(backup, lambda v: v["leader"] == found[0], 10.0) is not None
    return found[0], backup


def _log(cluster: LocalCluster, node: str) -> str:
    return (cluster.dir / f"{node}.log").read_text()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")}
    command = [sys.executable, "-m", "ha_voice", *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**clean, **(env or {})},
    )


# --- trusted networks: the seed's client, unchanged ------------------------------------------


@pytest.fixture(scope="module")
def open_lan() -> Iterator[LocalCluster]:
    """Nodes that trust loopback (the 'isolated robot network') and have no token file."""
    with (
        SimRobotProcess() as sim,
        LocalCluster(
            3,
            api_token=False,
            extra_flags=(f"--robot={sim.spec}", "--trusted-networks=127.0.0.0/8"),
        ) as cluster,
    ):
        cluster.start()
        _primary_and_backup(cluster)
        yield cluster


def test_the_seeds_client_works_from_a_trusted_network(open_lan: LocalCluster) -> None:
    primary, backup = _primary_and_backup(open_lan)
    client = JetsonVoiceClient(jetson_url=open_lan.nodes[backup].url)  # as the seed wrote it
    try:
        answer = client.send_command("sta op")
        assert answer["status"] == "success", answer
        assert client.start_listening() is True
    finally:
        client.close()
    journal = open_lan.nodes[primary].get("/api/journal?limit=1000")
    assert journal is not None
    assert journal.json()["entries"][-1]["source"] == f"127.0.0.1 via {backup}"


def test_a_trusted_network_is_a_warning_at_every_start(open_lan: LocalCluster) -> None:
    for node in open_lan.nodes:
        assert "trusted_networks = 127.0.0.0/8: any client from these addresses" in _log(
            open_lan, node
        )


def test_a_wrong_token_from_a_trusted_network_is_still_refused(open_lan: LocalCluster) -> None:
    primary, _backup = _primary_and_backup(open_lan)
    answer = httpx.post(
        open_lan.nodes[primary].url + "/api/settings",
        json={"listening": True},
        headers={"Authorization": f"Bearer {new_token()}"},
        timeout=10.0,
    )
    assert answer.status_code == 401
    assert "has no api_token_file" in answer.text


# --- nothing configured: refused, saying how ---------------------------------------------------


def test_with_no_tokens_and_no_networks_commands_are_refused_saying_how_to_configure() -> None:
    with LocalCluster(1, api_token=False) as single:
        single.start()
        assert single.wait_for_primary(START_S) is not None
        answer = httpx.post(single.nodes["n1"].url + "/api/voice/stop", timeout=10.0)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == 'Bearer realm="ha-voice"'
        assert "no api_token_file and no trusted_networks" in answer.text
        assert "ha-voice keygen" in answer.text
        assert "every command, setting and step-down is refused" in _log(single, "n1")


# --- token files that differ between nodes -----------------------------------------------------


def test_the_primary_judges_a_forwarded_token_by_its_own_token_file(tmp_path: Path) -> None:
    shared, only_backup = new_token(), new_token()
    files = {node: tmp_path / f"{node}.tokens" for node in ("n1", "n2", "n3")}
    for path in files.values():
        path.write_text(f"shared:{shared}\n")
        path.chmod(0o600)
    flags = {node: [f"--api-token-file={path}"] for node, path in files.items()}
    with LocalCluster(3, api_token=False, node_flags=flags) as cluster:
        cluster.start()
        primary, backup = _primary_and_backup(cluster)
        # Read again on change: the backup learns a token the primary does not know.
        files[backup].write_text(f"shared:{shared}\nonly-backup:{only_backup}\n")
        url = cluster.nodes[backup].url + "/api/settings"
        body = {"listening": True}
        refused = httpx.post(url, json=body, headers=_bearer(only_backup), timeout=10.0)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith('Bearer realm="ha-voice"')
        assert refused.headers["x-ha-voice-forwarded-by"] == backup  # the primary said no
        assert f"not one of {primary}'s tokens" in refused.json()["error"]
        assert f"(forwarded by {backup})" in refused.json()["error"]
        accepted = httpx.post(url, json=body, headers=_bearer(shared), timeout=10.0)
        assert accepted.status_code == 200, accepted.text
        assert "re-read: 2 token(s)" in _log(cluster, backup)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- a token file that breaks while the node runs: fail closed --------------------------------


def test_a_token_file_that_breaks_while_running_refuses_every_token_until_fixed() -> None:
    with LocalCluster(1) as single:
        single.start()
        assert single.wait_for_primary(START_S) is not None
        node, path = single.nodes["n1"], single.token_file
        assert node.token is not None
        assert node.post("/api/voice/start").status_code == 200
        good = path.read_bytes()
        newcomer = new_token()
        # Revoking the cluster's token with a copy that lost its mode, then by deleting the file.
        path.write_text(f"newcomer:{newcomer}\n")
        path.chmod(0o644)
        for why, gone in (
            ("mode 0644: group or others may read or write it", False),
            ("no such file", True),
        ):
            if gone:
                path.unlink()
            for token in (node.token, newcomer):
                answer = httpx.post(
                    node.url + "/api/voice/start", headers=_bearer(token), timeout=10.0
                )
                assert answer.status_code == 401, answer.text
                error = answer.json()["error"]
                assert f"api_token_file is refused ({why})" in error
                assert node.token not in answer.text
                assert newcomer not in answer.text
            assert _gauge(node, "ha_voice_api_token_file_ok") == 0.0
            health = node.get("/health", timeout_s=10.0)
            assert health is not None
            assert health.status_code == 200
            assert health.json()["status"] == "degraded"  # it can take no command now
            assert health.json()["token_file"] == f"refused: {why}"
            assert f"api_token_file refused: {why}" in health.json()["fault_reason"]
        path.write_bytes(good)
        path.chmod(0o600)
        assert _gauge(node, "ha_voice_api_token_file_ok") == 1.0
        health = node.get("/health", timeout_s=10.0)
        assert health is not None
        assert (health.json()["status"], health.json()["token_file"]) == ("ok", "ok")
        assert node.post("/api/voice/start").status_code == 200
        log = _log(single, "n1")
        assert log.count("is refused: every token gets 401") == 2
        assert "accepted again" in log
        assert node.token not in log
        assert newcomer not in log
        refusals = 'ha_voice_api_auth_refusals_total{reason="token_file_refused"}'
        assert _gauge(node, refusals) == 4.0


def _gauge(node: LocalNode, sample: str) -> float:
    answer = node.get("/metrics", timeout_s=10.0)
    assert answer is not None
    line = next(line for line in answer.text.splitlines() if line.startswith(sample + " "))
    return float(line.rsplit(" ", 1)[1])


# --- secrets: refused at start as ssh refuses an exposed key ------------------------------------


@pytest.mark.parametrize(
    ("secret", "mode"),
    [
        ("cluster_key_file", 0o640),
        ("cluster_key_file", 0o604),
        ("api_token_file", 0o644),
        ("api_token_file", 0o620),
        ("cluster_key_accepted_file", 0o660),
    ],
)
def test_a_node_refuses_to_start_with_an_exposed_secret(secret: str, mode: int) -> None:
    with LocalCluster(1) as single:
        node = single.nodes["n1"]
        path = {"cluster_key_file": single.key_file, "api_token_file": single.token_file}.get(
            secret, single.dir / "accepted.key"
        )
        if secret == "cluster_key_accepted_file":
            path.write_bytes(os.urandom(32))
            node.argv.append(f"--cluster-key-accepted-file={path}")
        path.chmod(mode)
        node.start()
        assert node.wait(30.0) == 2
        log = _log(single, "n1")
        assert f"{secret} = '{path}' has mode {mode:04o}" in log
        assert f"fix: chmod 600 {path}" in log
        assert not (single.dir / "n1" / "ha-voice.sqlite3").exists()  # refused before anything


def test_a_witness_refuses_to_start_with_an_exposed_key(tmp_path: Path) -> None:
    key = tmp_path / "cluster.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o644)
    result = _cli(
        "witness",
        "--node-id=w",
        "--peers=n1,n2",
        f"--cluster-key-file={key}",
        f"--state-dir={tmp_path / 'state'}",
        "--no-mdns",
    )
    assert result.returncode == 2
    assert f"cluster_key_file = '{key}' has mode 0644" in result.stderr
    assert f"chmod 600 {key}" in result.stderr


def test_a_short_token_refuses_the_start_without_showing_it() -> None:
    with LocalCluster(1) as single:
        single.token_file.write_text("ops:tooShort123\n")
        single.nodes["n1"].start()
        assert single.nodes["n1"].wait(30.0) == 2
        log = _log(single, "n1")
        assert "line 1: the token has 11 characters; allowed: 24 to 512" in log
        assert "tooShort123" not in log


# --- the CLI's ways to send a token ------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded() -> Iterator[LocalCluster]:
    with LocalCluster(2, witness=True) as cluster:
        with cluster.token_file.open("a") as tokens:
            tokens.write(f"bob:{new_token()}\n")
        cluster.start()
        _primary_and_backup(cluster)
        yield cluster


def test_send_takes_the_token_from_a_file_by_name_or_from_the_environment(
    guarded: LocalCluster,
) -> None:
    _primary, backup = _primary_and_backup(guarded)
    url = guarded.nodes[backup].url
    tokens = str(guarded.token_file)
    for how, args, env in (
        ("first token", ["--token-file", tokens], {}),
        ("named token", ["--token-file", tokens, "--token-name", "bob"], {}),
        ("environment", [], {"HA_VOICE_TOKEN": str(guarded.token)}),
    ):
        result = _cli("send", "--action", "stop", "--url", url, "--json", *args, env=env)
        assert '"executed_by"' in result.stdout, (how, result.stderr)
    refused = _cli("send", "--action", "stop", "--url", url)
    assert refused.returncode == 1
    assert "HTTP 401" in refused.stderr
    assert "api_token_file" in refused.stderr
    missing = _cli(
        "send", "--action", "stop", "--url", url, "--token-file", tokens, "--token-name", "eve"
    )
    assert missing.returncode == 2
    assert "no token named 'eve'; names there: local, bob" in missing.stderr


def test_step_down_without_a_token_is_not_allowed(guarded: LocalCluster) -> None:
    primary, _backup = _primary_and_backup(guarded)
    result = _cli("step-down", "--url", guarded.nodes[primary].url)
    assert result.returncode == 1
    assert "not allowed:" in result.stdout
    assert guarded.primaries() == [primary]


# --- the client library's ways to send a token ----------------------------------------------


def test_the_client_sends_ha_voice_token_unless_told_otherwise(
    guarded: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    _primary, backup = _primary_and_backup(guarded)
    url = guarded.nodes[backup].url
    monkeypatch.setenv("HA_VOICE_TOKEN", str(guarded.token))
    with HAVoiceClient(url=url) as client:
        assert client.set_listening(True)["listening"] is True
    with HAVoiceClient(url=url, token="") as client, pytest.raises(RequestError) as caught:
        client.set_listening(True)
    assert caught.value.status == 401
    seed = JetsonVoiceClient(jetson_url=url)  # as the seed wrote it, HA_VOICE_TOKEN set
    try:
        assert seed.start_listening() is True
    finally:
        seed.close()
    monkeypatch.delenv("HA_VOICE_TOKEN")
    bare = JetsonVoiceClient(jetson_url=url)
    given = JetsonVoiceClient(jetson_url=url, token=guarded.token)
    try:
        refused = bare.get_status(), bare.send_robot_command("stop")
        assert refused[0]["is_listening"] is True  # reads need no token
        assert refused[1]["status"] == "error"
        assert "HTTP 401" in refused[1]["message"]
        assert given.send_robot_command("stop")["executed_by"] is not None
    finally:
        bare.close()
        given.close()
