"""`ha-voice drill --crash`: which local process is the node at a URL, and its SIGKILL.

The process is the one the kernel says holds the listening TCP socket of the node's API
(`/proc/net/tcp*` gives the socket's inode, `/proc/PID/fd` who holds it), so it is the process
that answered the drill's `/cluster` there, not a guess from a name. It must look like
`ha-voice run`; where it is `ha-voice.service`'s MainPID, the report says so too. The signal
goes through a pidfd opened before the checks, so a pid reused in between is never signalled.
Linux only; everything else is refused with the reason (`CrashRefused`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ha_voice.errors import HAVoiceError

__all__ = ["CrashRefused", "LocalDaemon", "find_local_daemon"]

_LISTEN: Final = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column
_UNIT: Final = "ha-voice.service"
_SYSTEMCTL_TIMEOUT_S: Final = 2.0


class CrashRefused(HAVoiceError):
    """`--crash` cannot or must not kill anything here; the message says why."""


@dataclass(frozen=True)
class LocalDaemon:
    """The local process serving a node's API: its pid, command line and how it was found."""

    pid: int
    argv: tuple[str, ...]
    how: str  # "the listening socket" (+ ", systemd's MainPID" when both agree)
    pidfd: int | None  # open until `kill` (None where pidfds are not available)

    def kill(self) -> None:
        """SIGKILL the process (through its pidfd if there is one); ProcessLookupError if it
        is already gone."""
        if self.pidfd is None:
            os.kill(self.pid, signal.SIGKILL)
            return
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        finally:
            os.close(self.pidfd)

    def close(self) -> None:
        """Release the pidfd without signalling."""
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)


def find_local_daemon(host: str, port: int) -> LocalDaemon:
    """The `ha-voice run` process listening on `host`:`port` (TCP) on this host; CrashRefused
    if `host` is not an address of this host, nothing local listens there, or the listener is
    not an ha-voice node."""
    if host != "localhost" and not _is_address(host):
        raise CrashRefused(
            f"--url names {host}: --crash takes this host's node by address (leave out --url, "
            "or give http://127.0.0.1:PORT)"
        )
    if not _is_local(host):
        raise CrashRefused(
            f"{host} is not an address of this host: --crash kills the local daemon only; run "
            "the drill on the primary's host (or leave out --crash for a transfer)"
        )
    inodes = _listening_inodes(host, port)
    pids = _holders(inodes)
    if not pids:
        raise CrashRefused(
            f"no process of this host holds the socket listening on {host}:{port} (run as root "
            "or as the service user to see it)"
        )
    if len(pids) > 1:
        raise CrashRefused(f"several processes hold {host}:{port} ({sorted(pids)}): not one daemon")
    (pid,) = pids
    pidfd = _pidfd(pid)
    try:
        argv = _argv(pid)
        if not any("ha_voice" in arg or "ha-voice" in arg for arg in argv) or "run" not in argv:
            raise CrashRefused(f"pid {pid} on {host}:{port} is not `ha-voice run`: {argv[:4]}")
        how = "the process holding the API's listening socket"
        if _systemd_main_pid() == pid:
            how += f", {_UNIT}'s MainPID"
        if _holders(_listening_inodes(host, port)) != {pid}:
            raise CrashRefused(f"the listener on {host}:{port} changed while it was checked")
    except BaseException:
        if pidfd is not None:
            os.close(pidfd)
        raise
    return LocalDaemon(pid, tuple(argv), how, pidfd)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _is_local(host: str) -> bool:
    """Whether `host` (an IP address or `localhost`) is an address of this host: a bind to it
    succeeds only then."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if address.is_loopback:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True


def _listening_inodes(host: str, port: int) -> set[str]:
    """Inodes of the TCP sockets listening on `port` at `host`, else at the wildcard address
    (the kernel prefers an exact bind, and so does this)."""
    exact: set[str] = set()
    wildcard: set[str] = set()
    wanted = {str(ipaddress.ip_address("127.0.0.1" if host == "localhost" else host.strip("[]")))}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) < 10 or fields[3] != _LISTEN:
                    continue
                address, _, hex_port = fields[1].partition(":")
                if int(hex_port, 16) != port:
                    continue
                ip = _proc_address(address)
                if ip in wanted:
                    exact.add(fields[9])
                elif ip in ("0.0.0.0", "::"):
                    wildcard.add(fields[9])
    return exact or wildcard


def _proc_address(hex_address: str) -> str:
    """/proc/net/tcp's address (host byte order, little-endian words) as text."""
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    address = ipaddress.IPv6Address(words)
    return str(address.ipv4_mapped or address)


def _holders(inodes: set[str]) -> set[int]:
    """The pids with a file descriptor on one of the sockets `inodes`."""
    links = {f"socket:[{inode}]" for inode in inodes}
    pids: set[int] = set()
    if not links:
        return pids
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in links:
                        pids.add(int(entry.name))
                        break
    return pids


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError as exc:
        raise CrashRefused(f"pid {pid} is gone or unreadable: {exc.strerror}") from None
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _systemd_main_pid() -> int:
    """ha-voice.service's MainPID, 0 without systemd, the unit, or a running main process."""
    try:
        result = subprocess.run(
            ["systemctl", "show", "--property=MainPID", "--value", _UNIT],
            capture_output=True,
            text=True,
            timeout=_SYSTEMCTL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0
    text = result.stdout.strip()
    return int(text) if result.returncode == 0 and text.isdigit() else 0
