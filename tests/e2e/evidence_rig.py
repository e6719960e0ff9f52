"""A cluster in network namespaces for failover by evidence: nodes (and a witness) on a bridge,
a floating IP, and one more namespace with the simulated robot and a client that times, from a
given instant, its first TCP connect to the floating IP and the first robot command a primary
accepts through it. Used by tests/e2e/test_netns_evidence.py and tests/bench/bench_evidence.py.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ha_voice.local_cluster import LocalCluster
from tests.integration.netns import Lan, NsProcess

ROBOT_PORT = 7600
API_PORT = 8888

# Reads one JSON request a line, answers one JSON line each:
#   {"op": "get", "url": U}                      -> {"status": S, "body": B}
#   {"op": "race", "vip": V, "old": N, "token": T, "since": t0, "timeout_s": D}
#       -> from now until both happened (or D passed), every millisecond, each on a fresh
#          connection through V: GET /cluster/primary until a node other than N answers 200
#          (the floating IP reaches a serving primary), and POST /api/robot/command "stop" (one
#          idempotency key) until a node other than N accepts it; the monotonic instants of
#          both minus t0 (CLOCK_MONOTONIC is one clock for every namespace), and the answer.
CLIENT = """
import json, sys, time, uuid, httpx
client = httpx.Client(timeout=httpx.Timeout(0.1, connect=0.02),
                      limits=httpx.Limits(max_keepalive_connections=0))
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "get":
        try:
            r = client.get(req["url"])
            out = {"status": r.status_code, "body": r.text}
        except Exception as exc:
            out = {"status": None, "error": str(exc)}
    else:
        vip, t0, old = req["vip"], req["since"], req["old"]
        base = f"http://{vip}:%d" % (req.get("port", 8888),)
        headers = {"Authorization": "Bearer " + req["token"]}
        body = {"command": "stop", "idempotency_key": str(uuid.uuid4())}
        deadline = time.monotonic() + req["timeout_s"]
        connected = accepted = None
        answer = None
        while time.monotonic() < deadline and (connected is None or accepted is None):
            if connected is None:
                try:
                    r = client.get(base + "/cluster/primary")
                    if r.status_code == 200 and r.json()["node"] != old:
                        connected = time.monotonic() - t0
                except Exception:
                    pass
            if accepted is None:
                try:
                    r = client.post(base + "/api/robot/command", json=body, headers=headers)
                    if r.status_code == 200 and r.json()["node"] != old:
                        accepted = time.monotonic() - t0
                        answer = r.json()
                except Exception:
                    pass
            time.sleep(0.001)
        out = {"connected_s": connected, "accepted_s": accepted, "answer": answer}
    print(json.dumps(out), flush=True)
"""


@dataclass
class Outcome:
    """One failover as the client saw it (seconds from the signal; None: not within the
    timeout) and as the new primary recorded it."""

    signal: str
    old: str
    new: str | None
    connected_s: float | None  # the floating IP reaches the new primary (/cluster/primary 200)
    accepted_s: float | None  # the new primary accepts a robot command through it
    cause: str | None
    duration_s: float | None  # the new primary's: from the old one last heard to its lease
    signalled_at_unix_s: float  # wall clock at the signal, to line it up with the nodes' logs


@dataclass
class Rig:
    lan: Lan
    cluster: LocalCluster
    client: NsProcess
    vip: str

    def ask(self, request: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
        start = len(self.client.stdout.lines)
        self.client.send(json.dumps(request))
        line = self.client.wait_for(lambda text: text.startswith("{"), timeout_s, start)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def view(self, node: str) -> dict[str, Any] | None:
        """`/cluster` of `node`, fetched from the client's namespace; None if it does not
        answer."""
        reply = self.ask({"op": "get", "url": f"{self.cluster.nodes[node].url}/cluster"})
        if reply.get("status") != 200:
            return None
        view: dict[str, Any] = json.loads(reply["body"])
        return view

    def wait_for(self, node: str, predicate: Any, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            view = self.view(node)
            if view is not None and predicate(view):
                return view
            time.sleep(0.1)
        raise AssertionError(f"{node}: condition not met in {timeout_s} s\n{self.logs()}")

    def settled(self, timeout_s: float = 40.0) -> str:
        """The primary, once every member follows it and it holds the floating IP."""
        voters = [n for n in self.cluster.nodes if n != "w"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            views = {n: self.view(n) for n in self.cluster.nodes}
            leaders = {v["leader"] for v in views.values() if v is not None}
            primaries = [n for n in voters if (v := views[n]) and v["role"] == "primary"]
            if (
                len(primaries) == 1
                and leaders == set(primaries)
                and None not in views.values()
                and self.vip_on(primaries[0])
            ):
                return primaries[0]
            time.sleep(0.2)
        raise AssertionError(f"the cluster did not settle\n{self.logs()}")

    def vip_on(self, node: str) -> bool:
        index = list(self.cluster.nodes).index(node)
        out = self.lan[index].run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
        return f" {self.vip}/" in out

    def fail(self, fault: signal.Signals | str, timeout_s: float = 10.0) -> Outcome:
        """Signal the settled primary (or, for `fault` "cut", set its bridge port down: host
        loss, no evidence of death) at a random phase of its heartbeat and time the client's
        view; a SIGSTOPped node is resumed, a cut one reconnected, a stopped one restarted, and
        each rejoins."""
        old = self.settled()
        port = self.lan.port(list(self.cluster.nodes).index(old))
        assert self.lan.bridge is not None
        interval_s = 0.05
        time.sleep(1.0 + random.uniform(0.0, interval_s))
        sent, sent_unix = time.monotonic(), time.time()
        if fault == "cut":
            self.lan.bridge.ip("link", "set", port, "down")
        else:
            self.cluster.nodes[old].signal(signal.Signals(fault))
        token = str(self.cluster.token)
        race = {"op": "race", "vip": self.vip, "old": old, "token": token, "since": sent}
        seen = self.ask({**race, "timeout_s": timeout_s}, timeout_s + 5.0)
        answer = seen.get("answer") or {}
        new = answer.get("node") if isinstance(answer, dict) else None
        new = new if new in self.cluster.nodes else self._primary_now(old)
        failover = (self.view(new) or {}).get("last_failover") if new else None
        if fault == "cut":
            self.lan.bridge.ip("link", "set", port, "up")
        elif fault == signal.SIGSTOP:
            self.cluster.nodes[old].signal(signal.SIGCONT)
        else:
            self.cluster.nodes[old].wait(10.0)
            self.cluster.nodes[old].start()
        self.wait_for(old, lambda v: v["role"] == "backup" and v["leader"] == new, 40.0)
        return Outcome(
            "link cut" if fault == "cut" else signal.Signals(fault).name,
            old,
            new,
            seen.get("connected_s"),
            seen.get("accepted_s"),
            failover.get("cause") if failover else None,
            failover.get("duration_s") if failover else None,
            sent_unix,
        )

    def _primary_now(self, old: str) -> str | None:
        for node in self.cluster.nodes:
            if node not in (old, "w") and (v := self.view(node)) and v["role"] == "primary":
                return node
        return None

    def logs(self) -> str:
        return "\n".join(
            f"--- {n.node_id}\n{n.log_path.read_text()[-2500:]}"
            for n in self.cluster.nodes.values()
            if n.log_path.exists()
        )


@contextmanager
def evidence_rig(nodes: int, *, witness: bool, subnet: str, prefix: str) -> Iterator[Rig]:
    """`nodes` voters (plus a witness) and a client namespace holding the sim robot; raises
    `NetnsUnavailable` where namespaces cannot be made."""
    members = nodes + (1 if witness else 0)
    lan = Lan(members + 1, subnet=subnet, prefix=prefix)
    lan.create()
    cluster = None
    try:
        client_index = members
        vip = str(lan.network.network_address + 200)
        robot_at = f"{lan.address(client_index)}:{ROBOT_PORT}"
        sim = lan[client_index].spawn(
            [sys.executable, "-m", "ha_voice", "sim-robot", "--listen", robot_at]
        )
        sim.wait_for(lambda line: line.startswith("listening"), 15.0)
        cluster = LocalCluster(
            nodes,
            witness=witness,
            hosts=[lan.address(i) for i in range(members)],
            prefixes=[lan[i].exec_argv([]) for i in range(members)],
            node_flags={
                f"n{i + 1}": (
                    f"--robot=sim://{robot_at}",
                    f"--vip={vip}/{lan.network.prefixlen}",
                    "--vip-interface=eth0",
                )
                for i in range(nodes)
            },
        )
        client = lan[client_index].spawn([sys.executable, "-c", CLIENT])
        cluster.start()
        yield Rig(lan, cluster, client, vip)
    finally:
        if cluster is not None:
            cluster.close()
        lan.close()
