"""Evidence that a peer's process is gone, checked from here: its ports refuse.

A process that has died leaves its sockets closed, and the kernel of its host says so within one
round trip: a datagram to its UDP cluster port draws ICMP port unreachable (ECONNREFUSED on a
*connected* UDP socket), a TCP connect to its API port draws a RST (ECONNREFUSED). A paused
process keeps both bound (the datagram is queued, the kernel completes the handshake), a host
that is cut off or down answers nothing: neither is evidence. Both refusals are needed when the
API port is known, so that a firewall that rejects one port does not pass for a dead process.

Invariants:
- Never blocks the event loop and never resolves a name (the addresses are numeric).
- Bounded: each half ends after `timeout_s`; a timeout is "silent", never evidence. A port
  that shows the process alive (a TCP connection accepted) ends the probe at once.
- Costs a live ha-voice node nothing: the transport drops zero-length datagrams unread
  (transport.py), and the TCP probe ends with a RST, leaving no TIME_WAIT behind.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass

from ha_voice.cluster.protocol import Address

__all__ = ["ProbeResult", "async_probe"]

REFUSED = "refused"
SILENT = "silent"
ACCEPTED = "accepted"
NOT_PROBED = "not probed"
# SO_LINGER on, zero seconds: close() sends RST instead of FIN.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


@dataclass(frozen=True)
class ProbeResult:
    """What a peer's two ports answered: "refused", "silent", "accepted" (TCP), "answered"
    (UDP), "not probed" (no API port known), "not waited for" (the other port already showed
    the process alive) or "error: ..." (an OSError other than a refusal)."""

    udp: str
    tcp: str

    @property
    def gone(self) -> bool:
        """Whether this is evidence that no process holds the peer's ports."""
        return self.udp == REFUSED and self.tcp in (REFUSED, NOT_PROBED)

    def describe(self) -> str:
        return f"UDP {self.udp}, TCP {self.tcp}"


async def async_probe(address: Address, api_port: int | None, timeout_s: float) -> ProbeResult:
    """Probe the peer's cluster port at `address` and its API port (if known), concurrently;
    returns within about `timeout_s` seconds, whatever the network does."""
    if not api_port:
        return ProbeResult(await _async_udp(address, timeout_s), NOT_PROBED)
    udp = asyncio.ensure_future(_async_udp(address, timeout_s))
    tcp = asyncio.ensure_future(_async_tcp((address[0], api_port), timeout_s))
    try:
        done, _ = await asyncio.wait({udp, tcp}, return_when=asyncio.FIRST_COMPLETED)
        if any(task.result() != REFUSED for task in done):
            # One port is held (or unreachable): no evidence, whatever the other says.
            return ProbeResult(_settled(udp), _settled(tcp))
        await asyncio.wait({udp, tcp})
        return ProbeResult(udp.result(), tcp.result())
    finally:
        for task in (udp, tcp):
            task.cancel()


def _settled(task: asyncio.Future[str]) -> str:
    return task.result() if task.done() else "not waited for"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def _async_udp(address: Address, timeout_s: float) -> str:
    """Send one zero-length datagram on a connected socket; ICMP port unreachable comes back
    as ECONNREFUSED on the next receive."""
    loop = asyncio.get_running_loop()
    with socket.socket(_family(address[0]), socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            sock.connect(address)
            sock.send(b"")  # asyncio's datagram transport silently skips empty datagrams
            await asyncio.wait_for(loop.sock_recv(sock, 1), timeout_s)
        except ConnectionRefusedError:
            return REFUSED
        except asyncio.TimeoutError:
            return SILENT
        except OSError as exc:
            return f"error: {exc.strerror or exc}"
        return "answered"


async def _async_tcp(address: Address, timeout_s: float) -> str:
    """Open a TCP connection and reset it at once."""
    loop = asyncio.get_running_loop()
    with socket.socket(_family(address[0]), socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, address), timeout_s)
        except ConnectionRefusedError:
            return REFUSED
        except asyncio.TimeoutError:
            return SILENT
        except OSError as exc:
            return f"error: {exc.strerror or exc}"
        return ACCEPTED
