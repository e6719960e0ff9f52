"""How `ha-voice drill --crash` finds the local daemon: by the listening socket, never by name,
and never a process that is not `ha-voice run` nor one on another host."""

from __future__ import annotations

import os
import socket

import pytest

from ha_voice.drill_crash import CrashRefused, find_local_daemon


def test_the_holder_of_the_listening_socket_is_found_and_refused_when_not_a_node() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(CrashRefused) as refused:
            find_local_daemon("127.0.0.1", port)
    assert f"pid {os.getpid()} on 127.0.0.1:{port} is not `ha-voice run`" in str(refused.value)


def test_a_listener_on_every_address_is_found_from_loopback() -> None:
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(CrashRefused) as refused:
            find_local_daemon("localhost", port)
    assert f"pid {os.getpid()}" in str(refused.value)


def test_nothing_listening_is_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening
        with pytest.raises(CrashRefused) as refused:
            find_local_daemon("127.0.0.1", port)
    assert "no process of this host holds the socket listening on" in str(refused.value)


def test_an_address_of_another_host_is_refused() -> None:
    with pytest.raises(CrashRefused) as refused:
        find_local_daemon("192.0.2.7", 8888)  # TEST-NET-1: never this host's
    assert "192.0.2.7 is not an address of this host" in str(refused.value)
    with pytest.raises(CrashRefused) as refused:
        find_local_daemon("jetson-2", 8888)  # a name is not taken on trust either
    assert "--crash takes this host's node by address" in str(refused.value)
