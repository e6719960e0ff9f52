"""Watching a floating IP move, from outside the daemons: rtnetlink, TCP connects, robot commands.

Everything runs in the bench's own process. A socket is made inside a network namespace
(`inside`: setns for this thread only, then back) and stays in that namespace for its life, so
one thread watches the old node, the new node and the client at once, with no subprocess and
no pipe between the signal and the clock.

Invariants:
- All times are `time.monotonic()` seconds: CLOCK_MONOTONIC, one clock for every network
  namespace of the machine, and the sim robot's journal clock too.
- `measure` takes t0 immediately before its `act` (the signal, the cut link) and reports every
  event relative to it; nothing it waits for can make it exceed `timeout_s` by more than one
  probe attempt's timeout.
- A probe never sends to anything but the floating IP and the namespaces the caller names.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import selectors
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "AddrWatch",
    "CommandTarget",
    "HolderLog",
    "LinkSwitch",
    "Listener",
    "Measured",
    "connect_once",
    "inside",
    "measure",
    "watch_holders",
]

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(ctypes.c_int(fd), ctypes.c_int(_CLONE_NEWNET)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


@contextlib.contextmanager
def inside(namespace: str) -> Iterator[None]:
    """This thread in network namespace /run/netns/`namespace` for the body; sockets made in
    the body stay in it. OSError if the namespace does not exist."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/run/netns/{namespace}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


# --- rtnetlink: the floating IP's holder ------------------------------------------------------

_NLMSG_ERROR, _NLMSG_DONE = 2, 3
RTM_NEWADDR, RTM_DELADDR, _RTM_GETADDR = 20, 21, 22
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_RTMGRP_IPV4_IFADDR = 0x10
_NLH = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFA = struct.Struct("=BBBBi")  # family, prefix length, flags, scope, interface index
_RTA = struct.Struct("=HH")  # length, type


def _address_messages(data: bytes) -> Iterator[tuple[int, str | None]]:
    """(message type, IPv4 address or None) for each netlink message in `data`."""
    offset = 0
    while offset + _NLH.size <= len(data):
        length, kind, _flags, _seq, _port = _NLH.unpack_from(data, offset)
        if length < _NLH.size:
            return
        address = None
        if kind in (RTM_NEWADDR, RTM_DELADDR) and data[offset + _NLH.size] == socket.AF_INET:
            address = _ipv4_attribute(data, offset + _NLH.size + _IFA.size, offset + length)
        yield kind, address
        offset += (length + 3) & ~3


def _ipv4_attribute(data: bytes, start: int, end: int) -> str | None:
    """IFA_LOCAL (else IFA_ADDRESS) of one address message's attributes."""
    found: dict[int, str] = {}
    while start + _RTA.size <= end:
        length, kind = _RTA.unpack_from(data, start)
        if length < _RTA.size:
            break
        if kind in (_IFA_LOCAL, _IFA_ADDRESS) and length >= 8:
            found[kind] = socket.inet_ntoa(data[start + 4 : start + 8])
        start += (length + 3) & ~3
    return found.get(_IFA_LOCAL) or found.get(_IFA_ADDRESS)


class AddrWatch:
    """The IPv4 addresses of one network namespace: a dump on demand, and change events."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._seq = 0
        with inside(namespace):
            flags = socket.SOCK_RAW | socket.SOCK_CLOEXEC
            self.events_socket = socket.socket(
                socket.AF_NETLINK, flags | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE
            )
            self.events_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.events_socket.bind((0, _RTMGRP_IPV4_IFADDR))
            self._dump = socket.socket(socket.AF_NETLINK, flags, socket.NETLINK_ROUTE)
            self._dump.bind((0, 0))

    def addresses(self) -> set[str]:
        """The namespace's IPv4 addresses now (RTM_GETADDR dump); OSError on a netlink error."""
        self._seq += 1
        header = _NLH.pack(
            _NLH.size + _IFA.size, _RTM_GETADDR, _NLM_F_REQUEST | _NLM_F_DUMP, self._seq, 0
        )
        self._dump.send(header + _IFA.pack(socket.AF_INET, 0, 0, 0, 0))
        found: set[str] = set()
        while True:
            for kind, address in _address_messages(self._dump.recv(1 << 16)):
                if kind == _NLMSG_DONE:
                    return found
                if kind == _NLMSG_ERROR:
                    raise OSError(f"netlink dump error in {self.namespace}")
                if kind == RTM_NEWADDR and address:
                    found.add(address)

    def has(self, address: str) -> bool:
        return address in self.addresses()

    def events(self) -> list[tuple[int, str]] | None:
        """The address events queued so far, as (RTM_NEWADDR or RTM_DELADDR, address); None if
        the kernel dropped some (ENOBUFS): the caller must look with `addresses` instead."""
        found: list[tuple[int, str]] = []
        while True:
            try:
                data = self.events_socket.recv(1 << 16)
            except BlockingIOError:
                return found
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    return None
                raise
            found.extend(
                (kind, address)
                for kind, address in _address_messages(data)
                if kind in (RTM_NEWADDR, RTM_DELADDR) and address
            )

    def close(self) -> None:
        self.events_socket.close()
        self._dump.close()


_RTM_NEWLINK = 16
_NLM_F_ACK = 0x4
_IFF_UP = 0x1
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change


class LinkSwitch:
    """One interface of one namespace, set up or down with a single rtnetlink message: a cut
    that takes effect when `set` returns, not after a subprocess has started and ended."""

    def __init__(self, namespace: str, interface: str) -> None:
        with inside(namespace):
            self._sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
            )
            self._index = socket.if_nametoindex(interface)
        self._sock.bind((0, 0))
        self._seq = 0
        self.name = f"{namespace}/{interface}"

    def set(self, up: bool) -> None:
        """Bring the interface up or down; OSError with the kernel's errno if refused."""
        self._seq += 1
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, self._index, _IFF_UP if up else 0, _IFF_UP)
        flags = _NLM_F_REQUEST | _NLM_F_ACK
        self._sock.send(_NLH.pack(_NLH.size + len(body), _RTM_NEWLINK, flags, self._seq, 0) + body)
        reply = self._sock.recv(1 << 16)
        kind = _NLH.unpack_from(reply)[1]
        code = -struct.unpack_from("=i", reply, _NLH.size)[0] if kind == _NLMSG_ERROR else 0
        if code:
            raise OSError(code, f"{self.name}: {os.strerror(code)}")

    def close(self) -> None:
        self._sock.close()


# --- TCP: what a client sees ------------------------------------------------------------------


def _client_socket(namespace: str) -> socket.socket:
    """A non-blocking TCP socket in `namespace` that resets on close (no TIME_WAIT pile-up)."""
    with inside(namespace):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.setblocking(False)
    return sock


def connect_once(namespace: str, address: tuple[str, int], timeout_s: float) -> str:
    """One connect from `namespace`: "ok", "refused", "timeout" or "error:<errno name>"."""
    sock = _client_socket(namespace)
    sock.settimeout(timeout_s)
    try:
        sock.connect(address)
        return "ok"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as err:
        return f"error:{errno.errorcode.get(err.errno or 0, err.errno)}"
    finally:
        sock.close()


class Listener:
    """A TCP listener on 0.0.0.0:`port` in `namespace` that accepts and closes at once: it
    answers on the floating IP from the moment that namespace holds it."""

    def __init__(self, namespace: str, port: int) -> None:
        with inside(namespace):
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("0.0.0.0", port))
        self._sock.listen(4096)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed by close()
                return
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(2.0)


@dataclass(frozen=True)
class CommandTarget:
    """Where the robot-command probe posts (`/api/robot/command` on the floating IP) and whose
    answer counts: a 200 that names `executor` as the node that ran the command."""

    address: tuple[str, int]
    token: str
    executor: str


@dataclass
class _Attempts:
    """Attempts started on a grid; the first success's time."""

    started: int = 0
    refused: int = 0
    timeouts: int = 0
    errors: int = 0
    ok_s: float | None = None


class _ConnectProbe:
    """A new non-blocking connect every interval; success = the handshake completes."""

    def __init__(self, selector: selectors.BaseSelector, namespace: str, address: tuple[str, int]):
        self.selector, self.namespace, self.address = selector, namespace, address
        self.counts = _Attempts()
        self.deadlines: dict[socket.socket, float] = {}

    def launch(self, now: float, attempt_timeout_s: float) -> None:
        sock = _client_socket(self.namespace)
        self.counts.started += 1
        code = sock.connect_ex(self.address)
        if code != errno.EINPROGRESS:
            self._done(sock, code, now)
            return
        self.deadlines[sock] = now + attempt_timeout_s
        self.selector.register(sock, selectors.EVENT_WRITE, self)

    def ready(self, sock: socket.socket, now: float) -> None:
        self.selector.unregister(sock)
        del self.deadlines[sock]
        self._done(sock, sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), now)

    def _done(self, sock: socket.socket, code: int, now: float) -> None:
        sock.close()
        if code == 0:
            self.counts.ok_s = now if self.counts.ok_s is None else self.counts.ok_s
        elif code == errno.ECONNREFUSED:
            self.counts.refused += 1
        else:
            self.counts.errors += 1

    def expire(self, now: float) -> None:
        for sock, deadline in list(self.deadlines.items()):
            if now >= deadline:
                self.selector.unregister(sock)
                del self.deadlines[sock]
                sock.close()
                self.counts.timeouts += 1

    def close(self) -> None:
        self.expire(float("inf"))


class _CommandProbe(_ConnectProbe):
    """A new `stop` POST every interval, each with its own idempotency key; success = a 200
    whose body says `target.executor` ran it."""

    def __init__(self, selector: selectors.BaseSelector, namespace: str, target: CommandTarget):
        super().__init__(selector, namespace, target.address)
        self.target = target
        self.replies: dict[socket.socket, bytearray] = {}

    def _request(self) -> bytes:
        body = json.dumps({"command": "stop", "idempotency_key": str(uuid.uuid4())}).encode()
        host = f"{self.address[0]}:{self.address[1]}"
        head = (
            f"POST /api/robot/command HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {self.target.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        return head.encode() + body

    def ready(self, sock: socket.socket, now: float) -> None:
        if sock not in self.replies:  # connected, or failed to (SO_ERROR reads only once)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == 0:
                try:
                    sock.send(self._request())
                except OSError as err:
                    code = err.errno or errno.EIO
            if code != 0:
                self.selector.unregister(sock)
                del self.deadlines[sock]
                self._done(sock, code, now)
                return
            self.replies[sock] = bytearray()
            self.selector.modify(sock, selectors.EVENT_READ, self)
            return
        try:
            chunk = sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self.replies[sock].extend(chunk)
            return
        reply = bytes(self.replies.pop(sock))
        self.selector.unregister(sock)
        del self.deadlines[sock]
        sock.close()
        if self._accepted(reply):
            self.counts.ok_s = now if self.counts.ok_s is None else self.counts.ok_s
        else:
            self.counts.errors += 1

    def _accepted(self, reply: bytes) -> bool:
        head, _, body = reply.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            return False
        try:
            answer = json.loads(body)
        except ValueError:
            return False
        return isinstance(answer, dict) and answer.get("executed_by") == self.target.executor

    def expire(self, now: float) -> None:
        for sock in [s for s, deadline in self.deadlines.items() if now >= deadline]:
            self.replies.pop(sock, None)
        super().expire(now)


_DUMP_EVERY_S = 0.1  # how late a move is seen at worst if its rtnetlink event was lost


@dataclass
class Measured:
    """One move of the floating IP, in seconds after t0 (None: not seen before the timeout)."""

    vip_new_s: float | None = None  # the address appeared in the new node's namespace
    vip_old_gone_s: float | None = None  # it left the old node's namespace
    tcp_ok_s: float | None = None  # the client's first successful connect to it
    command_ok_s: float | None = None  # the new primary's first accepted robot command
    connects: dict[str, int] = field(default_factory=dict)  # started, refused, timeouts, errors


def measure(
    act: Callable[[], None],
    *,
    vip: tuple[str, int],
    client: str,
    new: AddrWatch,
    old: AddrWatch,
    command: CommandTarget | None = None,
    timeout_s: float = 30.0,
    interval_s: float = 0.005,
    attempt_timeout_s: float = 0.25,
) -> tuple[float, Measured]:
    """Run `act` at t0, then watch until the floating IP is on `new`, the client connects to
    vip (host, port) from namespace `client`, and (with `command`) a robot command is
    accepted, or `timeout_s` passes. Connects and commands start every `interval_s` (the
    first at t0), each abandoned after `attempt_timeout_s`. Returns (t0, what was seen)."""
    selector = selectors.DefaultSelector()
    selector.register(new.events_socket, selectors.EVENT_READ, new)
    selector.register(old.events_socket, selectors.EVENT_READ, old)
    new.events()
    old.events()
    probes: list[_ConnectProbe] = [_ConnectProbe(selector, client, vip)]
    if command is not None:
        probes.append(_CommandProbe(selector, client, command))
    seen = Measured()
    t0 = time.monotonic()
    act()
    next_launch = t0
    next_dump = t0 + _DUMP_EVERY_S
    deadline = t0 + timeout_s
    try:
        while True:
            now = time.monotonic()
            if now >= next_launch:
                for probe in probes:
                    if probe.counts.ok_s is None:
                        probe.launch(now, attempt_timeout_s)
                next_launch = max(next_launch + interval_s, now)
            for key, _ in selector.select(max(0.0, min(next_launch, deadline) - now)):
                _dispatch(key.data, key.fileobj, time.monotonic(), seen, new, old, vip[0])
            now = time.monotonic()
            for probe in probes:
                probe.expire(now)
            if seen.vip_new_s is None and now >= next_dump:  # a net under the events
                next_dump = now + _DUMP_EVERY_S
                seen.vip_new_s = now if new.has(vip[0]) else None
            done = seen.vip_new_s is not None and all(p.counts.ok_s is not None for p in probes)
            if done or now >= deadline:
                break
    finally:
        for probe in probes:
            probe.close()
        selector.close()
    seen.tcp_ok_s = _since(probes[0].counts.ok_s, t0)
    if command is not None:
        seen.command_ok_s = _since(probes[1].counts.ok_s, t0)
    counts = probes[0].counts
    seen.connects = {
        "started": counts.started,
        "refused": counts.refused,
        "timeouts": counts.timeouts,
        "errors": counts.errors,
    }
    seen.vip_new_s = _since(seen.vip_new_s, t0)
    seen.vip_old_gone_s = _since(seen.vip_old_gone_s, t0)
    return t0, seen


def _since(at: float | None, t0: float) -> float | None:
    return None if at is None else at - t0


def _dispatch(
    handler: object,
    fileobj: object,
    now: float,
    seen: Measured,
    new: AddrWatch,
    old: AddrWatch,
    vip: str,
) -> None:
    """One ready socket of `measure`: a probe's, or an address watch's (times stay absolute
    here; `measure` makes them relative at the end)."""
    if isinstance(handler, _ConnectProbe):
        assert isinstance(fileobj, socket.socket)
        handler.ready(fileobj, now)
        return
    events = handler.events() if isinstance(handler, AddrWatch) else []
    if events is None:  # lost events: look instead
        if handler is new and seen.vip_new_s is None and new.has(vip):
            seen.vip_new_s = now
        if handler is old and seen.vip_old_gone_s is None and not old.has(vip):
            seen.vip_old_gone_s = now
        return
    for kind, address in events:
        if address != vip:
            continue
        if handler is new and kind == RTM_NEWADDR and seen.vip_new_s is None:
            seen.vip_new_s = now
        elif handler is old and kind == RTM_DELADDR and seen.vip_old_gone_s is None:
            seen.vip_old_gone_s = now


# --- Spurious failovers: who holds the floating IP, over minutes ------------------------------


@dataclass
class HolderLog:
    """The floating IP's holders over a watch of `duration_s` seconds."""

    duration_s: float
    takes: dict[str, int]  # namespace -> times the address was added there
    none_s: float = 0.0  # seconds no namespace held it
    both_s: float = 0.0  # seconds two or more held it (a split brain, as the client sees it)


def watch_holders(watches: dict[str, AddrWatch], vip: str, duration_s: float) -> HolderLog:
    """Follow `vip` on every watched namespace (name -> watch) for `duration_s` seconds."""
    selector = selectors.DefaultSelector()
    for name, watch in watches.items():
        watch.events()
        selector.register(watch.events_socket, selectors.EVENT_READ, name)
    holders = {name for name, watch in watches.items() if watch.has(vip)}
    log = HolderLog(duration_s, dict.fromkeys(watches, 0))
    start = last = time.monotonic()
    end = start + duration_s
    try:
        while (now := time.monotonic()) < end:
            for key, _ in selector.select(end - now):
                name = str(key.data)
                at = time.monotonic()
                _account(log, holders, at - last)
                last = at
                events = watches[name].events()
                if events is None:
                    held = watches[name].has(vip)
                    log.takes[name] += int(held and name not in holders)
                    (holders.add if held else holders.discard)(name)
                    continue
                for kind, address in events:
                    if address == vip and kind == RTM_NEWADDR and name not in holders:
                        log.takes[name] += 1
                        holders.add(name)
                    elif address == vip and kind == RTM_DELADDR:
                        holders.discard(name)
        _account(log, holders, end - last)
    finally:
        selector.close()
    return log


def _account(log: HolderLog, holders: set[str], span_s: float) -> None:
    if not holders:
        log.none_s += span_s
    elif len(holders) > 1:
        log.both_s += span_s
