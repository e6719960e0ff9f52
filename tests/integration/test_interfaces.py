"""What a node waits for before its network is usable, against this host's real interfaces."""

from __future__ import annotations

import pytest

from ha_voice.config import Config
from ha_voice.interfaces import advertised_ipv4, local_ipv4, network_wait_reason

# TEST-NET-3 (RFC 5737): never an address of this host.
ABSENT = "203.0.113.77"


def test_addresses_of_this_host_are_ready() -> None:
    config = Config(listen_address="127.0.0.1", api_listen_address="127.0.0.2", mdns=False)
    assert network_wait_reason(config) is None


@pytest.mark.parametrize("key", ["listen_address", "api_listen_address"])
def test_an_address_not_yet_assigned_is_waited_for_by_its_key(key: str) -> None:
    config = Config(mdns=False, **{key: ABSENT})
    assert network_wait_reason(config) == f"{key} = {ABSENT!r} is not an address of this host yet"


def test_the_advertised_address_is_one_of_this_hosts() -> None:
    if not local_ipv4():
        pytest.skip("this host has no interface but lo with an IPv4 address")
    assert advertised_ipv4() in {address for _, address in local_ipv4()}
