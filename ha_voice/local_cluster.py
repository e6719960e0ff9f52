"""A cluster of real `ha-voice run` processes on one machine, for the demo, tests and benchmarks.

Each node is its own process with its own state directory, UDP port and API port on 127.0.0.1
(or on the addresses given), static peers, mDNS off unless asked for. Everything lives in one
temporary directory that `close()` removes after killing whatever is still running.

The cluster provisions one API token (`token`, in `token_file`, mode 0600, named `local`) that
every node accepts and `LocalNode.post` sends; with `ca_file` the nodes serve HTTPS (their
certificates come in `node_flags`) and are spoken to in HTTPS, verified against it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ha_voice.keyfiles import write_private
from ha_voice.tokens import new_token, token_line

__all__ = ["LocalCluster", "LocalNode", "SimRobotProcess", "free_port"]


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port the kernel just handed out for `kind` on `host` (free, barring a race)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalNode:
    """One `ha-voice run` process and how to reach it."""

    node_id: str
    host: str
    cluster_port: int
    api_port: int
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    prefix: Sequence[str] = ()
    client: httpx.Client | None = None
    token: str | None = None  # what `post` sends as its bearer token
    tls: ssl.SSLContext | None = None  # HTTPS, verified with this context
    wyoming_port: int = 10300  # the Wyoming speech-to-text server's (wyoming_port)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.api_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        log = self.log_path.open("ab")
        # Configured by flags alone: a test's own HA_VOICE_* settings are not the node's.
        env = {k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")}
        self.process = subprocess.Popen(
            [*self.prefix, *self.argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            # A prefix may fork rather than exec (faketime does): its own process group lets
            # a SIGKILL reach the daemon under it, which would otherwise outlive the test.
            start_new_session=bool(self.prefix),
        )
        log.close()

    def signal(self, signum: int) -> None:
        if self.running:
            assert self.process is not None
            if signum == signal.SIGKILL and self.prefix:
                self.kill_group()
            else:
                self.process.send_signal(signum)

    def kill_group(self) -> None:
        """SIGKILL to a prefixed node's whole process group (the prefix and the daemon)."""
        if self.process is not None and self.prefix:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def wait(self, timeout_s: float) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def get(self, path: str, timeout_s: float = 0.5) -> httpx.Response | None:
        try:
            return self._client.get(self.url + path, timeout=timeout_s)
        except httpx.HTTPError:
            return None

    def post(self, path: str, body: Any = None, timeout_s: float = 15.0) -> httpx.Response:
        """POST `body` as JSON to `path` with the cluster's token; httpx errors propagate."""
        return self._client.post(
            self.url + path, json=body, headers=self.auth_headers, timeout=timeout_s
        )

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def _client(self) -> httpx.Client:
        # Keep-alive: a new connection per poll would add milliseconds to every measurement.
        if self.client is None:
            self.client = httpx.Client(verify=self.tls or True)
        return self.client

    def cluster(self) -> dict[str, Any] | None:
        response = self.get("/cluster")
        return response.json() if response is not None and response.status_code == 200 else None

    def is_primary(self) -> bool:
        return self.status_code("/cluster/primary", timeout_s=0.2) == 200

    def status_code(self, path: str, timeout_s: float) -> int | None:
        """The HTTP status of GET `path`, over a bare socket: the poll that times failovers.

        A fresh connection per poll, so that a node that died is noticed at once; a bare
        HTTP/1.0 request takes ~1 ms.
        """
        request = f"GET {path} HTTP/1.0\r\nHost: {self.host}\r\n\r\n".encode()
        try:
            with socket.create_connection((self.host, self.api_port), timeout=timeout_s) as raw:
                sock = self.tls.wrap_socket(raw, server_hostname=self.host) if self.tls else raw
                sock.sendall(request)
                head = sock.recv(64)
        except OSError:
            return None
        parts = head.split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def toml_text(values: dict[str, Any]) -> str:
    """`values` (strings, numbers, booleans, lists of them) as TOML lines: JSON's spelling of
    those is TOML's."""
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


@dataclass
class LocalCluster:
    """N nodes n1..nN with static peers on loopback (or on `hosts`)."""

    size: int = 3
    cluster: str = field(default_factory=lambda: f"local-{os.getpid()}")
    hosts: Sequence[str] = ()
    extra_flags: Sequence[str] = ()
    prefixes: Sequence[Sequence[str]] = ()
    mdns: bool = False
    static_peers: bool = True
    witness: bool = False
    keep_dir: bool = False
    node_flags: Mapping[str, Sequence[str]] = field(default_factory=dict)
    api_token: bool = True  # provision a token and require it (--api-token-file)
    ca_file: Path | None = None  # the nodes serve HTTPS under this CA (certs in node_flags)
    # Speech (stt_enabled) on a node given a --whisper-model flag (in extra_flags or its
    # node_flags), or on every node with speech=True; off elsewhere, as loading the default
    # model costs each node seconds of CPU (and a download this machine may not have).
    speech: bool = False

    def __post_init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ha-voice-cluster-"))
        self.key_file = self.dir / "cluster.key"
        write_private(self.key_file, os.urandom(32))
        self.token: str | None = None
        self.token_file = self.dir / "api.tokens"
        if self.api_token:
            self.token = new_token()
            write_private(self.token_file, token_line("local", self.token).encode())
        tls = None if self.ca_file is None else ssl.create_default_context(cafile=self.ca_file)
        count = self.size + (1 if self.witness else 0)
        hosts = list(self.hosts) or ["127.0.0.1"] * count
        self.nodes: dict[str, LocalNode] = {}
        for i in range(count):
            node_id = f"n{i + 1}" if i < self.size else "w"
            host = hosts[i]
            udp = free_port(socket.SOCK_DGRAM, "127.0.0.1") if host == "127.0.0.1" else 7405
            api = free_port(socket.SOCK_STREAM, "127.0.0.1") if host == "127.0.0.1" else 8888
            loopback = host == "127.0.0.1"
            wyoming = free_port(socket.SOCK_STREAM, "127.0.0.1") if loopback else 10300
            prefix = self.prefixes[i] if self.prefixes else ()
            self.nodes[node_id] = LocalNode(
                node_id,
                host,
                udp,
                api,
                [],
                self.dir / f"{node_id}.log",
                prefix=prefix,
                token=self.token,
                tls=tls,
                wyoming_port=wyoming,
            )
        for node in self.nodes.values():
            node.argv = self._argv(node)

    def _argv(self, node: LocalNode) -> list[str]:
        def spec(other: LocalNode) -> str:
            if self.static_peers:
                return f"{other.node_id}@{other.host}:{other.cluster_port}"
            return other.node_id

        peers = [spec(o) for o in self.nodes.values() if o is not node and o.node_id != "w"]
        witness = self.nodes.get("w")
        witness_flags = [f"--witness={spec(witness)}"] if witness and witness is not node else []
        command = "witness" if node.node_id == "w" else "run"
        return [
            sys.executable,
            "-m",
            "ha_voice",
            command,
            f"--node-id={node.node_id}",
            f"--cluster={self.cluster}",
            f"--cluster-key-file={self.key_file}",
            f"--state-dir={self.dir / node.node_id}",
            f"--listen-address={node.host}",
            # Sharing this host's network, each node binds its API to its own address (nodes on
            # their own loopback addresses may share port 8888, as Jetsons do); under a prefix
            # (a network namespace of its own) it keeps the default, every address, so that
            # the floating IP reaches it as on a Jetson.
            *([] if self.prefixes else [f"--api-listen-address={node.host}"]),
            f"--cluster-port={node.cluster_port}",
            f"--port={node.api_port}",
            *([] if command == "witness" else [f"--wyoming-port={node.wyoming_port}"]),
            f"--peers={','.join(peers)}",
            "--mdns" if self.mdns else "--no-mdns",
            *([] if self._speech(node) or command == "witness" else ["--no-stt-enabled"]),
            *([f"--api-token-file={self.token_file}"] if self.token else []),
            *witness_flags,
            *self.extra_flags,
            *self.node_flags.get(node.node_id, ()),
        ]

    def config_values(self, node_id: str, **extra: Any) -> dict[str, Any]:
        """The configuration node `node_id` runs with, as a config file's keys (what `toml_text`
        writes for `ha-voice check` or `--config`), with `extra` keys added or replaced."""
        node = self.nodes[node_id]
        others = [o for o in self.nodes.values() if o is not node]
        return {
            "node_id": node.node_id,
            "cluster": self.cluster,
            "cluster_key_file": str(self.key_file),
            "api_token_file": str(self.token_file),
            "state_dir": str(self.dir / node.node_id),
            "listen_address": node.host,
            "api_listen_address": node.host,
            "cluster_port": node.cluster_port,
            "port": node.api_port,
            "peers": [
                f"{o.node_id}@{o.host}:{o.cluster_port}" if self.static_peers else o.node_id
                for o in others
            ],
            "mdns": self.mdns,
            **extra,
        }

    def _speech(self, node: LocalNode) -> bool:
        flags = [*self.extra_flags, *self.node_flags.get(node.node_id, ())]
        return self.speech or any(flag.startswith("--whisper-model") for flag in flags)

    @property
    def auth_headers(self) -> dict[str, str]:
        """The Authorization header with the cluster's token ({} without one)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def start(self) -> None:
        for node in self.nodes.values():
            node.start()

    def running(self) -> list[LocalNode]:
        return [node for node in self.nodes.values() if node.running]

    def primaries(self) -> list[str]:
        return [node.node_id for node in self.running() if node.is_primary()]

    def wait_for_primary(
        self, timeout_s: float, *, exclude: str | None = None, poll_s: float = 0.005
    ) -> tuple[str, float] | None:
        """The first node (other than `exclude`) to answer 200 on /cluster/primary, and when."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in self.running():
                if node.node_id != exclude and node.is_primary():
                    return node.node_id, time.monotonic()
            time.sleep(poll_s)
        return None

    def wait_for(self, node_id: str, predicate: Any, timeout_s: float) -> dict[str, Any] | None:
        """Poll `node_id`'s /cluster until `predicate(view)` holds; the view, or None."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            view = self.nodes[node_id].cluster()
            if view is not None and predicate(view):
                return view
            time.sleep(0.05)
        return None

    def kill(self, node_id: str, signum: int = signal.SIGKILL) -> None:
        node = self.nodes[node_id]
        node.signal(signum)
        if signum == signal.SIGKILL:
            node.wait(5.0)

    def close(self) -> None:
        """Kill every process (SIGCONT first, in case one is stopped) and remove the directory."""
        for node in self.nodes.values():
            if node.running:
                node.signal(signal.SIGCONT)
                node.signal(signal.SIGKILL)
                node.wait(5.0)
            node.kill_group()  # a forking prefix's daemon, even once the prefix has exited
            if node.client is not None:
                node.client.close()
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SimRobotProcess:
    """`ha-voice sim-robot` as its own process on a free port of `host`; `close()` stops it."""

    def __init__(self, host: str = "127.0.0.1", prefix: Sequence[str] = ()) -> None:
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "ha_voice", "sim-robot", "--listen", f"{host}:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        # The first line is the server's contract: "listening HOST:PORT".
        host, port = self.process.stdout.readline().split()[1].rsplit(":", 1)
        self.host, self.port = host, int(port)

    @property
    def spec(self) -> str:
        """The `robot` setting that points a node at this simulator."""
        return f"sim://{self.host}:{self.port}"

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)

    def __enter__(self) -> SimRobotProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
