"""sd_notify against real AF_UNIX datagram sockets, as systemd would listen."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ha_voice import sdnotify

# sockaddr_un holds 108 bytes, NUL included.
_MAX_SOCKET_PATH = 107


@pytest.fixture
def socket_dir(tmp_path: Path) -> Iterator[Path]:
    if len(str(tmp_path / "notify")) <= _MAX_SOCKET_PATH:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="hv-") as short:
        yield Path(short)


@pytest.fixture
def listener(socket_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = socket_dir / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_ready_sends_one_datagram_with_the_exact_bytes(listener: socket.socket) -> None:
    assert sdnotify.ready("x") is True
    assert listener.recv(4096) == b"READY=1\nSTATUS=x"


def test_each_helper_sends_its_assignment(listener: socket.socket) -> None:
    assert sdnotify.ready()
    assert sdnotify.status("primary, term 4")
    assert sdnotify.stopping()
    assert sdnotify.watchdog()
    assert sdnotify.notify("A=1", "B=2")
    received = [listener.recv(4096) for _ in range(5)]
    assert received == [
        b"READY=1",
        b"STATUS=primary, term 4",
        b"STOPPING=1",
        b"WATCHDOG=1",
        b"A=1\nB=2",
    ]


def test_extend_timeout_asks_for_microseconds_with_a_status(listener: socket.socket) -> None:
    assert sdnotify.extend_timeout(3.0, "waiting for the network")
    assert listener.recv(4096) == b"EXTEND_TIMEOUT_USEC=3000000\nSTATUS=waiting for the network"


def test_a_status_cannot_smuggle_in_another_assignment(listener: socket.socket) -> None:
    assert sdnotify.status("line one\nREADY=1")
    assert listener.recv(4096) == b"STATUS=line one READY=1"


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"ha-voice-test-{os.getpid()}-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready("abstract") is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=abstract"


@pytest.mark.parametrize("value", [None, ""])
def test_no_notify_socket_is_false_without_raising(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.ready("x") is False
    assert sdnotify.watchdog() is False


def test_a_socket_path_that_does_not_exist_is_false(
    socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(socket_dir / "absent"))
    assert sdnotify.ready("x") is False


def test_a_relative_notify_socket_is_ignored(
    socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(socket_dir / "notify"))
        monkeypatch.chdir(socket_dir)
        monkeypatch.setenv("NOTIFY_SOCKET", "notify")
        assert sdnotify.ready("x") is False


def test_a_full_socket_fails_fast_instead_of_blocking(listener: socket.socket) -> None:
    # Nobody reads: the receive queue fills (net.unix.max_dgram_qlen), and then sends must fail.
    results = [sdnotify.watchdog() for _ in range(5000)]
    assert results[0] is True
    assert False in results


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("", None, None),
        ("2000000", None, 1.0),
        ("30000000", "self", 15.0),
        ("2000000", "other", None),
        ("not-a-number", None, None),
        ("0", None, None),
        ("-5", None, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    usec: str | None, pid: str | None, expected: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            pids = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}
            monkeypatch.setenv(name, pids.get(value, value))
    assert sdnotify.watchdog_interval_s() == expected
