"""Linux network namespaces for tests that need a real LAN: real sockets, real multicast.

`Lan(size)` is `size` namespaces, each with `eth0` on one bridge and the address
`lan.address(i)`; the bridge lives in a namespace of its own. `Netns.run`, `popen` and
`spawn` run a command inside a namespace (`ip netns exec`, which execs the command, so a
process id is the command's own).

Invariants:
- Everything lives in namespaces this module made, the bridge too: the host's interfaces,
  routes and firewall are never touched.
- Names carry the creating process id, so parallel runs (pytest-xdist) never collide; a name
  left over by a killed run with the same id is deleted before it is made again.
- `close()` (or leaving the `with` block) kills every process started through `popen` or
  `spawn` and deletes every namespace, also when the test failed; it never raises.
- Creating the first namespace is the only failure reported as `NetnsUnavailable` (not root,
  no iproute2), so that a test can skip; any later failure is a real error.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import IO, Any

import pytest

__all__ = ["Lan", "LineReader", "Netns", "NetnsUnavailable", "NsProcess"]

# Long enough for a slow CI machine to exit cleanly, short enough not to stall a failed test.
_TERMINATE_WAIT_S = 3.0


class NetnsUnavailable(Exception):
    """Network namespaces cannot be made here; the message says why."""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


class Netns:
    """One network namespace with `lo` up; the processes started in it die with it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._processes: list[subprocess.Popen[Any]] = []

    @classmethod
    def create(cls, name: str) -> Netns:
        """Make the namespace (deleting a leftover of the same name first) and bring `lo` up."""
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        _ip("netns", "add", name)
        namespace = cls(name)
        try:
            namespace.ip("link", "set", "lo", "up")
        except BaseException:
            namespace.close()
            raise
        return namespace

    def ip(self, *args: str) -> None:
        """Run `ip -n <name> ARGS`, raising on failure."""
        _ip("-n", self.name, *args)

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` prefixed so that it runs inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], *, timeout_s: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the namespace to completion, capturing text output."""
        return subprocess.run(
            self.exec_argv(argv), capture_output=True, text=True, timeout=timeout_s, check=check
        )

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside the namespace; `close()` kills it if it still runs."""
        process = subprocess.Popen(self.exec_argv(argv), **kwargs)
        self._processes.append(process)
        return process

    def spawn(self, argv: Sequence[str], **kwargs: Any) -> NsProcess:
        """Start `argv` with text pipes for stdin, stdout and stderr (read on threads)."""
        pipes = subprocess.PIPE
        process = self.popen(
            argv, stdin=pipes, stdout=pipes, stderr=pipes, text=True, bufsize=1, **kwargs
        )
        return NsProcess(process)

    def close(self) -> None:
        """Kill the processes started here, then delete the namespace."""
        for process in self._processes:
            _stop(process)
        self._processes.clear()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(_TERMINATE_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):  # stdin's unread rest: a broken pipe, not news
                stream.close()


class LineReader:
    """Collects the lines of a text stream on a daemon thread, to wait for one by deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._fresh: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._fresh.put(line.rstrip("\n"))
        except ValueError:  # the stream was closed under us by close()
            pass
        self._fresh.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout_s: float, start: int = 0) -> str:
        """The first line at index `start` or later to match within timeout_s; else TimeoutError."""
        deadline = time.monotonic() + timeout_s
        seen = start
        while True:
            for line in self.lines[seen:]:
                if predicate(line):
                    return line
            seen = len(self.lines)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._take(remaining):
                raise TimeoutError(f"no matching line in {timeout_s} s; saw {self.lines!r}")

    def drain(self) -> list[str]:
        """Every line received so far."""
        while self._take(0):
            pass
        return self.lines

    def _take(self, timeout_s: float) -> bool:
        """Move one fresh line into `lines`; False at the end of the stream or on timeout."""
        try:
            line = self._fresh.get(timeout=timeout_s) if timeout_s > 0 else self._fresh.get_nowait()
        except queue.Empty:
            return False
        if line is None:
            self._fresh.put(None)  # stays at the end for every later caller
            return False
        self.lines.append(line)
        return True


class NsProcess:
    """A process in a namespace that talks in lines: `send` to its stdin, `wait_for` its stdout."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        if process.stdout is None or process.stderr is None:
            raise ValueError("NsProcess needs a process started with stdout and stderr pipes")
        self.process = process
        self.stdout = LineReader(process.stdout)
        self.stderr = LineReader(process.stderr)

    def send(self, line: str) -> None:
        """Write one line to the process's stdin."""
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def wait_for(self, predicate: Callable[[str], bool], timeout_s: float, start: int = 0) -> str:
        """Like `LineReader.wait_for` on stdout; the TimeoutError shows stderr and the exit code."""
        try:
            return self.stdout.wait_for(predicate, timeout_s, start)
        except TimeoutError as err:
            stderr = "\n".join(self.stderr.drain())
            raise TimeoutError(
                f"{err}\nexit code {self.process.poll()}; stderr:\n{stderr}"
            ) from None

    def wait(self, timeout_s: float) -> int:
        """Wait for the process to exit on its own; its exit code."""
        return self.process.wait(timeout_s)

    def end_input(self, timeout_s: float = 5.0) -> None:
        """Close its stdin (a line-driven helper's cue to exit) and wait `timeout_s` for it to
        go, then kill it; nothing if it has exited already."""
        if self.process.poll() is not None or self.process.stdin is None:
            return
        self.process.stdin.close()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Lan:
    """`size` namespaces on one bridge, node i at `address(i)` in `subnet`."""

    def __init__(self, size: int, subnet: str = "10.213.0.0/24", prefix: str = "hvn") -> None:
        self.size = size
        self.network = ipaddress.IPv4Network(subnet)
        self.prefix = f"{prefix}{os.getpid()}"
        self.bridge: Netns | None = None
        self.nodes: list[Netns] = []

    def __enter__(self) -> Lan:
        self.create()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __getitem__(self, index: int) -> Netns:
        return self.nodes[index]

    def address(self, index: int) -> str:
        """Node `index`'s IPv4 address (the network's host number index + 1)."""
        return str(self.network.network_address + index + 1)

    def port(self, index: int) -> str:
        """The bridge-side interface of node `index`, in `bridge`: set it down to cut the node."""
        return f"p{index}"

    def create(self) -> None:
        """Make the namespaces, the bridge and the links; NetnsUnavailable if not possible."""
        if shutil.which("ip") is None:
            raise NetnsUnavailable("iproute2 ('ip') is not installed")
        try:
            self.bridge = Netns.create(f"{self.prefix}-br")
        except subprocess.CalledProcessError as err:
            raise NetnsUnavailable(
                f"cannot make a network namespace: {err.stderr.strip()}"
            ) from err
        try:
            self._make_bridge(self.bridge)
            for index in range(self.size):
                self.nodes.append(Netns.create(f"{self.prefix}-{index}"))
                self._connect(self.bridge, self.nodes[index], index)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Kill every process started in the LAN and delete its namespaces."""
        for namespace in self.nodes:
            namespace.close()
        self.nodes.clear()
        if self.bridge is not None:
            self.bridge.close()
            self.bridge = None

    @staticmethod
    def _make_bridge(bridge: Netns) -> None:
        bridge.ip("link", "add", "br0", "type", "bridge")
        # No IGMP snooping: with no querier on this LAN it would only get in multicast's way.
        bridge.ip("link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
        bridge.ip("link", "set", "br0", "up")

    def _connect(self, bridge: Netns, node: Netns, index: int) -> None:
        port = self.port(index)
        bridge.ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", node.name)
        bridge.ip("link", "set", port, "master", "br0", "up")
        node.ip("addr", "add", f"{self.address(index)}/{self.network.prefixlen}", "dev", "eth0")
        node.ip("link", "set", "eth0", "up")
        # Tools that send multicast without choosing an interface need a route for it.
        node.ip("route", "add", "224.0.0.0/4", "dev", "eth0")


@contextlib.contextmanager
def created(network: Lan) -> Iterator[Lan]:
    """`network` created (the test skipped where namespaces cannot be made), then closed."""
    try:
        network.create()
    except NetnsUnavailable as exc:
        pytest.skip(f"network namespaces unavailable: {exc}")
    try:
        yield network
    finally:
        network.close()


def http_probe(timeout_s: float = 0.5) -> str:
    """A client to run in a namespace (`python -c`): reads URLs on stdin, prints one JSON line
    per GET (status and body, or the error), each within `timeout_s` seconds."""
    return f"""
import json, sys, httpx
client = httpx.Client(timeout={timeout_s!r})
for line in sys.stdin:
    url = line.strip()
    try:
        r = client.get(url)
        print(json.dumps({{"url": url, "status": r.status_code, "body": r.text}}), flush=True)
    except Exception as exc:
        print(json.dumps({{"url": url, "status": None, "error": str(exc)}}), flush=True)
"""


HTTP_PROBE = http_probe()
