"""HTTPS for the API: the certificates made by the docs' own openssl commands, three real
daemons serving them, a backup forwarding over verified HTTPS, clients and the CLI verifying,
and the mDNS endpoint saying `scheme=https`."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ha_voice.client import AsyncHAVoiceClient, ClientError, HAVoiceClient
from ha_voice.cluster.discovery import Discovery
from ha_voice.local_cluster import LocalCluster, free_port, toml_text
from tests.doc_commands import block, run

NODES = {"n1": "jetson-1", "n2": "jetson-2", "n3": "jetson-3"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cluster CA and three node certificates, by the commands in docs/operations.md."""
    directory = tmp_path_factory.mktemp("pki")
    run(block("tls-certificates"), directory)
    return directory


def tls_flags(pki: Path, name: str) -> list[str]:
    return [
        f"--tls-cert-file={pki / f'{name}.crt'}",
        f"--tls-key-file={pki / f'{name}.key'}",
        f"--tls-ca-file={pki / 'ca.crt'}",
    ]


@pytest.fixture(scope="module")
def cluster(pki: Path) -> Iterator[LocalCluster]:
    flags = {node: tls_flags(pki, name) for node, name in NODES.items()}
    with LocalCluster(3, node_flags=flags, ca_file=pki / "ca.crt") as running:
        running.start()
        assert running.wait_for_primary(20.0) is not None
        yield running


def roles(cluster: LocalCluster) -> tuple[str, str]:
    found = cluster.wait_for_primary(20.0)
    assert found is not None
    backup = next(n for n in cluster.nodes if n != found[0])
    assert cluster.wait_for(backup, lambda v: v["leader"] == found[0], 10.0) is not None
    return found[0], backup


def strict(pki: Path) -> ssl.SSLContext:
    """What Python 3.13 verifies by default (VERIFY_X509_STRICT), on any Python."""
    context = ssl.create_default_context(cafile=pki / "ca.crt")
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def test_the_documented_certificates_are_private_and_strictly_valid(pki: Path) -> None:
    for name in NODES.values():
        assert (pki / f"{name}.key").stat().st_mode & 0o077 == 0
        verified = subprocess.run(
            ["openssl", "verify", "-x509_strict", "-CAfile", "ca.crt", f"{name}.crt"],
            cwd=pki,
            capture_output=True,
            text=True,
            check=False,
        )
        assert verified.stdout.strip() == f"{name}.crt: OK", verified.stderr


def test_the_api_speaks_https_only(cluster: LocalCluster, pki: Path) -> None:
    node = cluster.nodes["n1"]
    assert node.url.startswith("https://")
    answer = httpx.get(node.url + "/health", verify=strict(pki), timeout=5.0)
    assert answer.status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{node.api_port}/health", timeout=5.0)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(node.url + "/health", timeout=5.0)  # the system's CAs do not know ours


def test_a_backup_forwards_over_verified_https(cluster: LocalCluster, pki: Path) -> None:
    primary, backup = roles(cluster)
    view = cluster.nodes[backup].cluster()
    assert view is not None
    assert view["leader_api"] == cluster.nodes[primary].url
    with HAVoiceClient(
        url=cluster.nodes[backup].url, token=cluster.token, ca_file=pki / "ca.crt"
    ) as client:
        result = client.command("stop")
    assert result.node == primary
    assert result.body["executed_by"] == primary


def test_a_client_without_the_ca_refuses_the_node(cluster: LocalCluster) -> None:
    url = cluster.nodes["n1"].url
    client = HAVoiceClient(url=url, token=cluster.token, deadline_s=0.5)
    with client, pytest.raises(ClientError, match="CERTIFICATE_VERIFY_FAILED"):
        client.command("stop")


def test_the_cli_verifies_with_the_ca_file(cluster: LocalCluster, pki: Path) -> None:
    _primary, backup = roles(cluster)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")}
    url = cluster.nodes[backup].url
    ca = str(pki / "ca.crt")
    for args in (
        [
            "send",
            "--action",
            "stop",
            "--url",
            url,
            "--ca-file",
            ca,
            "--token-file",
            str(cluster.token_file),
        ],
        ["status", "--url", url, "--ca-file", ca],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "ha_voice", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert result.returncode in (0, 1), result.stderr  # 1: stop fails without a robot
        assert "CERTIFICATE" not in result.stderr
        assert ("executed by" in result.stdout) or ("primary" in result.stdout), result.stdout


def test_the_mdns_endpoint_says_https_and_the_client_follows(
    cluster: LocalCluster, pki: Path
) -> None:
    primary, _backup = roles(cluster)
    name = f"tls-{os.getpid()}"

    async def scenario() -> str | None:
        discovery = Discovery(
            cluster=name,
            node_id=primary,
            address="127.0.0.1",
            cluster_port=free_port(socket.SOCK_DGRAM),
            api_port=cluster.nodes[primary].api_port,
            priority=100,
            version="test",
            api_scheme="https",
        )
        await discovery.async_start(lambda record: None, lambda node: None)
        try:
            await discovery.async_publish_endpoint(1)
            async with AsyncHAVoiceClient(
                cluster=name, interfaces=["127.0.0.1"], token=cluster.token, ca_file=pki / "ca.crt"
            ) as client:
                result = await client.command("stop")
            return result.node
        finally:
            await discovery.async_close()

    assert asyncio.run(scenario()) == primary


def test_check_asks_the_nodes_over_verified_https(
    cluster: LocalCluster, pki: Path, tmp_path: Path
) -> None:
    node = cluster.nodes["n1"]
    values = cluster.config_values(
        "n1",
        stt_enabled=False,
        robot="sim",
        tls_cert_file=str(pki / "jetson-1.crt"),
        tls_key_file=str(pki / "jetson-1.key"),
        tls_ca_file=str(pki / "ca.crt"),
    )
    config = tmp_path / "n1.toml"
    config.write_text(toml_text(values))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")}
    done = subprocess.run(
        [sys.executable, "-m", "ha_voice", "check", "--json", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = {f["check"]: f for f in json.loads(done.stdout)["checks"]}
    for key in ("tls_cert_file", "tls_key_file", "tls_ca_file", "node", "peers", "timers"):
        assert found[key]["level"] == "ok", found[key]
    assert found["node"]["detail"].startswith(f"n1 answers at https://{node.host}:")
    assert "measured by the primary" in found["timers"]["detail"]


def test_an_exposed_or_mismatched_tls_key_refuses_the_start(pki: Path, tmp_path: Path) -> None:
    exposed = tmp_path / "exposed.key"
    exposed.write_bytes((pki / "jetson-1.key").read_bytes())
    exposed.chmod(0o644)
    for key, says in (
        (exposed, f"tls_key_file = '{exposed}' has mode 0644"),
        (pki / "jetson-2.key", "cannot be loaded"),
    ):
        flags = {
            "n1": [
                f"--tls-cert-file={pki / 'jetson-1.crt'}",
                f"--tls-key-file={key}",
                f"--tls-ca-file={pki / 'ca.crt'}",
            ]
        }
        with LocalCluster(1, node_flags=flags) as single:
            single.nodes["n1"].start()
            assert single.nodes["n1"].wait(30.0) == 2
            assert says in (single.dir / "n1.log").read_text()
