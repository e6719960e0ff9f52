"""The probe for evidence of death against real sockets and real processes on loopback:
only a process that is gone (SIGKILL) refuses on both ports; a paused (SIGSTOP) or live one
never does; a zero-length probe costs a live transport nothing."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ha_voice.cluster.probe import ProbeResult, async_probe
from ha_voice.cluster.transport import UDPTransport

TIMEOUT_S = 0.05  # a loopback refusal comes back in well under a millisecond

# Binds a UDP and a listening TCP port, prints them, then sleeps: a daemon's two sockets.
_HOLDER = """
import socket, sys, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
t = socket.socket(); t.bind(("127.0.0.1", 0)); t.listen(8)
print(u.getsockname()[1], t.getsockname()[1], flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder() -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    process = subprocess.Popen([sys.executable, "-c", _HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        udp_port, tcp_port = (int(p) for p in process.stdout.readline().split())
        yield process, udp_port, tcp_port
    finally:
        process.kill()
        process.wait(10)


def _probe(udp_port: int, tcp_port: int | None) -> ProbeResult:
    return asyncio.run(async_probe(("127.0.0.1", udp_port), tcp_port, TIMEOUT_S))


def _free_ports() -> tuple[int, int]:
    """A UDP and a TCP port that nothing holds any more."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
        u.bind(("127.0.0.1", 0))
        t.bind(("127.0.0.1", 0))
        return u.getsockname()[1], t.getsockname()[1]


def test_a_live_process_leaves_no_evidence(holder: tuple[subprocess.Popen[str], int, int]) -> None:
    _, udp_port, tcp_port = holder
    result = _probe(udp_port, tcp_port)
    # The accepted connection ends the probe: the UDP half is not waited for.
    assert result == ProbeResult("not waited for", "accepted")
    assert not result.gone
    alone = _probe(udp_port, None)
    assert alone == ProbeResult("silent", "not probed")  # a bound port swallows the datagram
    assert not alone.gone


def test_a_paused_process_leaves_no_evidence(
    holder: tuple[subprocess.Popen[str], int, int],
) -> None:
    process, udp_port, tcp_port = holder
    process.send_signal(signal.SIGSTOP)
    try:
        result = _probe(udp_port, tcp_port)
        alone = _probe(udp_port, None)
    finally:
        process.send_signal(signal.SIGCONT)
    assert result == ProbeResult("not waited for", "accepted")  # the kernel answers for it
    assert alone == ProbeResult("silent", "not probed")  # and queues the datagram
    assert not result.gone
    assert not alone.gone


def test_a_killed_process_refuses_on_both_ports(
    holder: tuple[subprocess.Popen[str], int, int],
) -> None:
    process, udp_port, tcp_port = holder
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    result = _probe(udp_port, tcp_port)
    assert result == ProbeResult("refused", "refused")
    assert result.gone


def test_a_refusal_on_one_port_alone_is_not_evidence(
    holder: tuple[subprocess.Popen[str], int, int],
) -> None:
    _, udp_port, tcp_port = holder
    closed_udp, closed_tcp = _free_ports()
    assert not _probe(closed_udp, tcp_port).gone  # UDP refused, API port alive
    assert not _probe(udp_port, closed_tcp).gone  # API port refused, cluster port alive


def test_without_an_api_port_a_udp_refusal_is_enough() -> None:
    closed_udp, _ = _free_ports()
    result = _probe(closed_udp, None)
    assert result == ProbeResult("refused", "not probed")
    assert result.gone


def test_the_transport_drops_zero_length_probes_unread() -> None:
    async def scenario() -> list[bytes]:
        got: list[bytes] = []
        transport = await UDPTransport.open("127.0.0.1", 0, lambda data, _: got.append(data))
        try:
            result = await async_probe(transport.address, None, TIMEOUT_S)
            assert result == ProbeResult("silent", "not probed")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                sender.sendto(b"hello", transport.address)
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.01)
        finally:
            transport.close()
        return got

    assert asyncio.run(scenario()) == [b"hello"]
