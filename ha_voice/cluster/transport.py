"""The cluster's UDP socket: bytes in, bytes out, nothing else.

Invariants:
- Never raises into the event loop: a send to an unreachable peer or an ICMP error is logged
  at debug and forgotten; the election copes with loss by design.
- Knows nothing of the protocol: decoding, authentication and drop counting are the node's.
- Zero-length datagrams are dropped unread and uncounted: they are other nodes' probes for
  evidence that this process is gone (probe.py), and must cost a live node nothing.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import cast

from ha_voice.cluster.protocol import Address

__all__ = ["UDPTransport"]

log = logging.getLogger(__name__)

# The kernel's default receive buffer (~200 KB) holds ~1000 datagrams; a paused daemon should not
# lose its backlog of a few seconds of heartbeats, so ask for 1 MiB (capped by rmem_max).
_RECEIVE_BUFFER_BYTES = 1 << 20


class UDPTransport(asyncio.DatagramProtocol):
    """An asyncio UDP endpoint bound to (host, port); hands every datagram to `on_datagram`."""

    def __init__(self, on_datagram: Callable[[bytes, Address], None]) -> None:
        self._on_datagram = on_datagram
        self._transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(
        cls, host: str, port: int, on_datagram: Callable[[bytes, Address], None]
    ) -> UDPTransport:
        """Bind and start receiving; raises OSError (address in use, …) to the caller."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER_BYTES)
        sock.bind((host, port))
        protocol = cls(on_datagram)
        await loop.create_datagram_endpoint(lambda: protocol, sock=sock)
        return protocol

    @property
    def address(self) -> Address:
        assert self._transport is not None
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if not data:
            return  # a peer's probe (see the module docstring)
        self._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("cluster socket error: %s", exc)

    def send(self, data: bytes, address: Address) -> None:
        """Queue one datagram; failures are the network's business, not ours."""
        if self._transport is None or self._transport.is_closing():
            return
        try:
            self._transport.sendto(data, address)
        except OSError as exc:
            log.debug("send to %s failed: %s", address, exc)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
