"""What a node waits for before its network is usable, against this host's real interfaces."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ha_voice import cli
from ha_voice.config import Config
from ha_voice.interfaces import advertised_ipv4, local_ipv4, network_wait_reason
from ha_voice.keyfiles import write_private

# TEST-NET-3 (RFC 5737): never an address of this host.
ABSENT = "203.0.113.77"


def test_addresses_of_this_host_are_ready() -> None:
    config = Config(listen_address="127.0.0.1", api_listen_address="127.0.0.2", mdns=False)
    assert network_wait_reason(config) is None


@pytest.mark.parametrize("key", ["listen_address", "api_listen_address"])
def test_an_address_not_yet_assigned_is_waited_for_by_its_key(key: str) -> None:
    config = Config(mdns=False, **{key: ABSENT})
    assert network_wait_reason(config) == f"{key} = {ABSENT!r} is not an address of this host yet"


def test_a_floating_ip_interface_not_there_yet_is_waited_for() -> None:
    config = Config(vip="10.9.9.9/24", vip_interface="hvnope0", mdns=False)
    assert network_wait_reason(config) == "vip_interface = 'hvnope0': no such interface yet"


def test_config_check_says_what_a_start_would_wait_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_private(tmp_path / "cluster.key", os.urandom(32))
    path = tmp_path / "config.toml"
    path.write_text(
        f'cluster_key_file = "{tmp_path / "cluster.key"}"\nstate_dir = "{tmp_path / "s"}"\n'
        f'listen_address = "{ABSENT}"\n'
    )
    assert cli.main(["config", "check", str(path)]) == 0  # valid: the address may come later
    err = capsys.readouterr().err
    assert f"a start now would wait for the network: listen_address = {ABSENT!r}" in err


def test_the_advertised_address_is_one_of_this_hosts() -> None:
    if not local_ipv4():
        pytest.skip("this host has no interface but lo with an IPv4 address")
    assert advertised_ipv4() in {address for _, address in local_ipv4()}
