"""keepalived and ha-voice, each on a LAN of network namespaces of its own, driven alike.

A rig is one daemon pair on its own bridge (`tests/integration/netns.Lan`): node A (priority
150, the primary at rest), node B (priority 100, where the floating IP moves to) and a client;
ha-voice adds its witness and the sim robot. The floating IP is host .100 of the rig's /24; a
TCP listener on port 8080 runs in B's namespace only, so a connect from the client to the
floating IP is refused while A holds it and succeeds once B does.

Invariants:
- A rig touches nothing outside the namespaces its Lan made; `close()` stops its daemons,
  removes its namespaces (and with them its nftables tables) and never raises.
- Every signal goes to a process id the rig started (keepalived's parent and VRRP child come
  from the pid files it told keepalived to write, inside its run directory).
- `home()` is the state every trial starts from: A holds the floating IP, B does not, and the
  client's connects reach A (refused), steadily for 100 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from ha_voice.config import load_config
from ha_voice.errors import ConfigError
from ha_voice.keyfiles import write_private
from ha_voice.local_cluster import toml_text
from ha_voice.robot.sim_server import fetch_journal
from ha_voice.tokens import new_token, token_line
from tests.bench.vip_probe import (
    AddrWatch,
    CommandTarget,
    LinkSwitch,
    Listener,
    connect_once,
    inside,
)
from tests.integration.netns import Lan

__all__ = ["HaVoiceRig", "KeepalivedRig", "Rig", "ha_voice_timers"]

A, B, CLIENT, WITNESS, ROBOT = 0, 1, 2, 3, 4
PRIORITY = {A: 150, B: 100}
LISTEN_PORT = 8080
API_PORT = 8888
CLUSTER_PORT = 7405
ROBOT_PORT = 7600
VRID = 77
LOSS_TABLE = "hv_bench_loss"

# Runs keepalived as its child while being a child subreaper (PR_SET_CHILD_SUBREAPER = 36), so
# the VRRP child orphaned by a SIGKILL of its parent is reaped here: this machine's PID 1 does
# not reap. SIGTERM is passed to the child only.
_SUPERVISE = """
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
def forward(signum, frame):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
signal.signal(signal.SIGTERM, forward)
code = 0
while True:
    try:
        done, status = os.waitpid(-1, 0)
    except ChildProcessError:
        break
    if done == pid:
        code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


class Rig:
    """One daemon pair on its own LAN; subclasses say how to start, crash and stop it."""

    name = ""
    nodes = 3

    def __init__(self, advert_s: float, subnet: str, prefix: str, logs: Path) -> None:
        self.advert_s = advert_s
        self.lan = Lan(self.nodes, subnet=subnet, prefix=prefix)
        self.vip = str(self.lan.network.network_address + 100)
        self.vip_cidr = f"{self.vip}/{self.lan.network.prefixlen}"
        self.logs = logs
        self.dir = Path(tempfile.gettempdir()) / f"{self.lan.prefix}-{self.name}"
        self.processes: dict[int, subprocess.Popen[Any]] = {}
        self.listener: Listener | None = None
        self.watches: dict[int, AddrWatch] = {}
        self.a_port: LinkSwitch | None = None

    # --- life cycle

    def open(self) -> Rig:
        """Make the LAN, write the configs, start every daemon; returns self."""
        try:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir.mkdir(parents=True)
            self.logs.mkdir(parents=True, exist_ok=True)
            self.lan.create()
            self.listener = Listener(self.ns(B), LISTEN_PORT)
            self.watches = {node: AddrWatch(self.ns(node)) for node in (A, B)}
            assert self.lan.bridge is not None
            self.a_port = LinkSwitch(self.lan.bridge.name, self.lan.port(A))
            self.setup()
            for node in self.start_order():
                self.start(node)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the daemons, delete the namespaces and the run directory; never raises."""
        for watch in self.watches.values():
            watch.close()
        if self.a_port is not None:
            self.a_port.close()
        if self.listener is not None:
            self.listener.close()
        self.lan.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Rig:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ns(self, node: int) -> str:
        return self.lan[node].name

    def address(self, node: int) -> str:
        return self.lan.address(node)

    def popen(self, node: int, argv: list[str], log_name: str) -> subprocess.Popen[Any]:
        """Start `argv` in node's namespace, output appended to logs/<daemon>_<advert>_<name>."""
        with (self.logs / f"{self.name}_{self.advert_s}_{log_name}.log").open("ab") as log:
            process = self.lan[node].popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.processes[node] = process
        return process

    # --- what a subclass provides

    def setup(self) -> None:
        """Write the configs (and check them)."""
        raise NotImplementedError

    def start_order(self) -> list[int]:
        return [B, A]

    def start(self, node: int) -> None:
        raise NotImplementedError

    def crash_signals(self) -> list[tuple[int, int]]:
        """(signal, pid) to send to A's daemon for a crash, in order."""
        raise NotImplementedError

    def configs(self) -> dict[str, str]:
        """File name -> text of every configuration this rig runs."""
        raise NotImplementedError

    def describe(self) -> list[str]:
        """Markdown lines: version, command line, timers."""
        raise NotImplementedError

    def command_target(self) -> CommandTarget | None:
        """Where a robot command is probed, or None for a daemon without a robot."""
        return None

    def robot_first_s(self, t0: float) -> float | None:
        """Seconds from t0 to the first command the robot got from B, or None."""
        return None

    # --- the faults

    def graceful_signals(self) -> list[tuple[int, int]]:
        return [(signal.SIGTERM, self.processes[A].pid)]

    def send(self, signals: list[tuple[int, int]]) -> None:
        for signum, pid in signals:
            os.kill(pid, signum)

    def cut_a(self, down: bool) -> None:
        """Set A's bridge port down (the host is gone: no packet in or out) or up."""
        assert self.a_port is not None
        self.a_port.set(not down)

    def reap(self, node: int, timeout_s: float = 20.0) -> None:
        """Wait until node's daemon (its supervisor, for keepalived) has exited."""
        self.processes[node].wait(timeout_s)

    def forget_neighbours(self) -> None:
        """Drop the client's ARP entry for the floating IP (after a healed cut: a keepalived
        master that never stopped being one sends no new gratuitous ARP)."""
        self.lan[CLIENT].ip("neigh", "flush", "to", self.vip)

    def home(self, timeout_s: float = 90.0, stable_s: float = 0.1) -> float:
        """Wait for the rest state (module docstring); seconds it took. TimeoutError if not."""
        start = time.monotonic()
        good_since: float | None = None
        while (now := time.monotonic()) - start < timeout_s:
            if self._at_home():
                good_since = now if good_since is None else good_since
                if now - good_since >= stable_s:
                    return good_since - start
            else:
                good_since = None
            time.sleep(0.01)
        raise TimeoutError(f"{self.name}: A did not hold the floating IP alone in {timeout_s} s")

    def _at_home(self) -> bool:
        if not self.watches[A].has(self.vip) or self.watches[B].has(self.vip):
            return False
        return connect_once(self.ns(CLIENT), (self.vip, LISTEN_PORT), 0.2) == "refused"

    def set_loss(self, percent: int) -> None:
        """Drop `percent` % of the frames in and out of A's and B's links, at random (nftables'
        random number per frame, counted), or remove the rules with 0.

        The drop is on the bridge, where a real lossy link loses frames: silently. A drop in
        the node's own output hook would fail the sender's send() with EPERM instead."""
        assert self.lan.bridge is not None
        bridge = self.lan.bridge
        bridge.run(["nft", "delete", "table", "bridge", LOSS_TABLE], check=False)
        if percent:
            path = self.dir / "loss.nft"
            path.write_text(_loss_rules(percent, [self.lan.port(A), self.lan.port(B)]))
            bridge.run(["nft", "-f", str(path)])

    def loss_counts(self) -> tuple[int, int]:
        """(frames that met a random drop, frames dropped) since `set_loss`."""
        assert self.lan.bridge is not None
        listing = self.lan.bridge.run(["nft", "-j", "list", "table", "bridge", LOSS_TABLE])
        seen = dropped = 0
        for item in json.loads(listing.stdout)["nftables"]:
            rule = item.get("rule")
            if rule is None:
                continue
            drops = any("drop" in part for part in rule["expr"])
            for part in rule["expr"]:
                if "counter" in part:
                    packets = int(part["counter"]["packets"])
                    dropped += packets if drops else 0
                    seen += 0 if drops else packets
        return seen, dropped


def _loss_rules(percent: int, ports: list[str]) -> str:
    """A bridge table that drops `percent` % of the frames coming from and going to `ports`
    (a frame between two of them meets two draws), counting what each draw saw."""
    names = ", ".join(f'"{port}"' for port in ports)
    rules = "".join(
        f"    {direction} {{ {names} }} counter\n"
        f"    {direction} {{ {names} }} numgen random mod 100 < {percent} counter drop\n"
        for direction in ("iifname", "oifname")
    )
    return (
        f"table bridge {LOSS_TABLE} {{\n  chain forward {{\n"
        f"    type filter hook forward priority 0; policy accept;\n{rules}  }}\n}}\n"
    )


class KeepalivedRig(Rig):
    """keepalived (the Debian package), VRRPv3, priorities 150/100, multicast adverts."""

    name = "keepalived"
    binary = shutil.which("keepalived") or "/usr/sbin/keepalived"
    # -n foreground, -P the VRRP subsystem only (a parent and one VRRP child), -l log to the
    # console (our log file), -D detailed, -G no syslog.
    flags: ClassVar[list[str]] = ["-n", "-P", "-l", "-D", "-G"]

    def _conf(self, node: int) -> Path:
        return self.dir / f"keepalived-{'ab'[node]}.conf"

    def _pid_file(self, node: int, kind: str) -> Path:
        return self.dir / f"keepalived-{'ab'[node]}.{kind}.pid"

    def setup(self) -> None:
        for node in (A, B):
            self._conf(node).write_text(self._config(node))
            subprocess.run(
                [self.binary, "-t", "-f", str(self._conf(node))],
                check=True,
                capture_output=True,
                timeout=30,
            )

    def _config(self, node: int) -> str:
        return (
            f"global_defs {{\n    router_id {'ab'[node]}\n    vrrp_version 3\n}}\n\n"
            "vrrp_instance VI_BENCH {\n    state BACKUP\n    interface eth0\n"
            f"    virtual_router_id {VRID}\n    priority {PRIORITY[node]}\n"
            f"    advert_int {self.advert_s}\n"
            f"    virtual_ipaddress {{\n        {self.vip_cidr} dev eth0\n    }}\n}}\n"
        )

    def argv(self, node: int) -> list[str]:
        pid_files = [
            arg
            for flag, kind in (("-p", "main"), ("-r", "vrrp"), ("-c", "checker"), ("-b", "bfd"))
            for arg in (flag, str(self._pid_file(node, kind)))
        ]
        return [self.binary, *self.flags, "-f", str(self._conf(node)), *pid_files]

    def start(self, node: int) -> None:
        for kind in ("main", "vrrp"):
            self._pid_file(node, kind).unlink(missing_ok=True)
        process = self.popen(node, [sys.executable, "-c", _SUPERVISE, *self.argv(node)], "ab"[node])
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and process.poll() is None:
            if all(self._pid(node, kind) for kind in ("main", "vrrp")):
                return
            time.sleep(0.01)
        raise RuntimeError(f"keepalived did not start in {self.ns(node)} (see {self.logs})")

    def _pid(self, node: int, kind: str) -> int | None:
        """The pid in node's pid file of `kind`, if that process is a live keepalived."""
        try:
            pid = int(self._pid_file(node, kind).read_text().strip())
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            return None
        alive = "(keepalived)" in stat and stat.rsplit(")", 1)[1].split()[0] != "Z"
        return pid if alive else None

    def crash_signals(self) -> list[tuple[int, int]]:
        # The parent is stopped first so that it cannot respawn the child, and not killed first
        # because the child has PDEATHSIG = SIGTERM and would hand over gracefully.
        parent, child = self._pid(A, "main"), self._pid(A, "vrrp")
        if parent is None or child is None:
            raise RuntimeError("keepalived on A is not running")
        return [(signal.SIGSTOP, parent), (signal.SIGKILL, child), (signal.SIGKILL, parent)]

    def graceful_signals(self) -> list[tuple[int, int]]:
        parent = self._pid(A, "main")
        if parent is None:
            raise RuntimeError("keepalived on A is not running")
        return [(signal.SIGTERM, parent)]

    def configs(self) -> dict[str, str]:
        return {f"keepalived-{'ab'[n]}.conf": self._config(n) for n in (A, B)}

    def describe(self) -> list[str]:
        version = subprocess.run(
            [self.binary, "--version"], capture_output=True, text=True, check=False
        )
        package = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "keepalived"],
            capture_output=True,
            text=True,
            check=False,
        )
        skew = (256 - PRIORITY[B]) / 256 * self.advert_s
        return [
            f"- keepalived: `{(version.stdout or version.stderr).splitlines()[0]}` (Debian "
            f"package `{package.stdout or '?'}`), `keepalived {' '.join(self.flags)} -f <conf> "
            "-p/-r/-c/-b <pid files>` under a child-subreaper supervisor; crash = SIGSTOP "
            "parent, SIGKILL VRRP child, SIGKILL parent; graceful = SIGTERM parent (priority-0 "
            f"advert). VRRPv3 master-down interval 3 x {self.advert_s} + skew {skew:.3f} s.",
        ]


def ha_voice_timers(
    advert_s: float, key_file: Path, choice: str = "advert"
) -> tuple[dict[str, float], str]:
    """The timer keys ha-voice runs with beside keepalived at `advert_s`, and a sentence
    saying which. `choice`: "advert", a heartbeat of `advert_s` (alone if ha-voice accepts
    it, else with the smallest election_timeout_s, in tenths of a heartbeat, that it accepts);
    "defaults", no timer key at all (the default profile's); or "HB/ET", a heartbeat and an
    election timeout in seconds. ValueError if ha-voice refuses them."""
    base = {"node_id": "a", "cluster": "bench", "cluster_key_file": str(key_file)}
    if choice != "advert":
        chosen: dict[str, float] = {}
        if choice != "defaults":
            heartbeat, _, election = choice.partition("/")
            chosen = {"heartbeat_interval_s": float(heartbeat)}
            chosen["election_timeout_s"] = float(election)
        try:
            resolved = load_config(None, env={}, flags={**base, **chosen}).election_timers()
        except ConfigError as err:
            raise ValueError(f"--ha-voice-timers {choice}: {err}") from err
        what = "the defaults" if choice == "defaults" else "set"
        return chosen, (
            f"{what}: heartbeat {resolved.heartbeat_interval_s * 1000:g} ms, election timeout "
            f"{resolved.election_timeout_s:g} s (not following the advert interval)"
        )
    timers: dict[str, float] = {"heartbeat_interval_s": advert_s}
    try:
        load_config(None, env={}, flags={**base, **timers})
        return timers, f"`heartbeat_interval_s = {advert_s}` alone (the profile's other timers)"
    except ConfigError:
        pass
    for tenths in range(30, 101):
        election = round(advert_s * tenths / 10, 4)
        candidate = {**timers, "election_timeout_s": election}
        try:
            load_config(None, env={}, flags={**base, **candidate})
        except ConfigError:
            continue
        return candidate, (
            f"`heartbeat_interval_s = {advert_s}` alone is refused; the smallest "
            f"`election_timeout_s` accepted with it is {election} s"
        )
    raise ValueError(f"ha-voice accepts no election timeout up to 10 heartbeats of {advert_s} s")


class HaVoiceRig(Rig):
    """ha-voice: two nodes (`ha-voice run`), a witness and the sim robot, in namespaces."""

    name = "ha-voice"
    nodes = 5
    timer_choice = "advert"  # see `ha_voice_timers`

    def setup(self) -> None:
        self.key_file = self.dir / "cluster.key"
        write_private(self.key_file, os.urandom(32))
        self.token = new_token()
        self.token_file = self.dir / "api.tokens"
        write_private(self.token_file, token_line("bench", self.token).encode())
        self.timers, self.timer_note = ha_voice_timers(
            self.advert_s, self.key_file, self.timer_choice
        )
        for node in (A, B, WITNESS):
            self._conf(node).write_text(toml_text(self._values(node)))

    def _id(self, node: int) -> str:
        return {A: "a", B: "b", WITNESS: "w"}[node]

    def _conf(self, node: int) -> Path:
        return self.dir / f"ha-voice-{self._id(node)}.toml"

    def _values(self, node: int) -> dict[str, Any]:
        def spec(other: int) -> str:
            return f"{self._id(other)}@{self.address(other)}:{CLUSTER_PORT}"

        values: dict[str, Any] = {
            "node_id": self._id(node),
            "cluster": "bench",
            "cluster_key_file": str(self.key_file),
            "state_dir": str(self.dir / f"state-{self._id(node)}"),
            "listen_address": self.address(node),
            "peers": [spec(other) for other in (A, B) if other != node],
            "witness": spec(WITNESS),
            **self.timers,
        }
        if node == WITNESS:
            return values
        return {
            **values,
            "api_token_file": str(self.token_file),
            "priority": PRIORITY[node],
            # The harness needs A back as the primary after each trial; the default delay of
            # 10 s would only lengthen the time between trials.
            "preempt": True,
            "preempt_delay_s": 1.0,
            "robot": f"sim://{self.address(ROBOT)}:{ROBOT_PORT}",
            "vip": self.vip_cidr,
            "vip_interface": "eth0",
            "stt_enabled": False,
        }

    def start_order(self) -> list[int]:
        return [ROBOT, WITNESS, B, A]

    def start(self, node: int) -> None:
        module = [sys.executable, "-m", "ha_voice"]
        if node == ROBOT:
            argv = [*module, "sim-robot", "--listen", f"{self.address(ROBOT)}:{ROBOT_PORT}"]
            self.popen(node, argv, "robot")
            return
        command = "witness" if node == WITNESS else "run"
        argv = [*module, command, "--config", str(self._conf(node))]
        self.popen(node, argv, self._id(node))

    def crash_signals(self) -> list[tuple[int, int]]:
        return [(signal.SIGKILL, self.processes[A].pid)]

    def command_target(self) -> CommandTarget:
        return CommandTarget((self.vip, API_PORT), self.token, self._id(B))

    def robot_first_s(self, t0: float) -> float | None:
        with inside(self.ns(CLIENT)):
            journal = asyncio.run(fetch_journal(self.address(ROBOT), ROBOT_PORT))
        arrivals = [e.arrival_s for e in journal if e.node == "b" and e.arrival_s >= t0]
        return min(arrivals) - t0 if arrivals else None

    def configs(self) -> dict[str, str]:
        return {self._conf(n).name: toml_text(self._values(n)) for n in (A, B, WITNESS)}

    def describe(self) -> list[str]:
        version = subprocess.run(
            [sys.executable, "-m", "ha_voice", "--version"],
            capture_output=True,
            text=True,
            check=False,
        )
        commit = _git("log", "-1", "--format=%h", "--", "ha_voice") or "?"
        if _git("status", "--porcelain", "--", "ha_voice"):
            commit += " with uncommitted changes"
        return [
            f"- ha-voice: `{version.stdout.strip()}`, `ha_voice/` at commit {commit}, Python "
            f"{sys.version.split()[0]}; nodes a (150) and b (100) run `ha-voice run --config "
            "<toml>`, the witness `ha-voice witness --config <toml>`, the robot "
            f"`ha-voice sim-robot`, each in its own namespace; timers: {self.timer_note}; "
            "crash = SIGKILL of a's daemon; graceful = SIGTERM (leadership transfer).",
        ]


def _git(*args: str) -> str:
    """`git ARGS` in this checkout, stripped output ("" where git fails)."""
    root = Path(__file__).resolve().parents[2]
    argv = ["git", "-C", str(root), *args]
    done = subprocess.run(argv, check=False, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""
