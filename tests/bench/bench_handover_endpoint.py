"""Benchmark: the floating IP on a graceful handover (SIGTERM, step-down), seen from outside.

Not a pass/fail test. Writes its section of docs/benchmarks.md. Run as root:

    python tests/bench/bench_handover_endpoint.py [--trials 20]

Two `ha-voice run` nodes and a witness, each in its own network namespace on a bridge, mDNS on,
the floating IP on eth0, default (`wired`) timers; a client in a fourth namespace. Per trial,
from the moment the primary is sent SIGTERM (or the client POSTs /cluster/step-down):
- `vip_new`: the floating IP appears on the new primary (an rtnetlink RTM_NEWADDR listener in
  its namespace; CLOCK_MONOTONIC is one clock across namespaces);
- `vip_old_gone`: it leaves the old primary (RTM_DELADDR);
- `client`: the first 200 from /cluster/primary through the floating IP answered by the new
  primary (a new TCP connection every 5 ms, each with a 50 ms timeout, as a client retries);
- `failed`: attempts in that window that no node answered (refused, reset or timed out).
A node stopped by SIGTERM is restarted and rejoins before the next trial, and (unless --cold)
leads once, unmeasured, so that no measured handover goes to a process started a second ago;
the modes alternate.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench_sim_failover import write_section  # run as a script: its directory is on the path

from ha_voice.local_cluster import LocalCluster

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: for `tests`
from tests.client_view import witness_pair
from tests.integration.netns import Lan, NsProcess, created

START, END = "<!-- bench_handover_endpoint:start -->", "<!-- bench_handover_endpoint:end -->"
VIP = "10.220.0.200"
CLIENT = 3

# In a node's namespace: one JSON line per RTM_NEWADDR / RTM_DELADDR of argv[1].
ADDRESS_MONITOR = r"""
import json, socket, struct, sys, time
vip = socket.inet_aton(sys.argv[1])
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
sock.bind((0, 0x10))  # RTMGRP_IPV4_IFADDR
print(json.dumps({"ready": True}), flush=True)
while True:
    data = sock.recv(65536)
    at = time.monotonic()
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if kind in (20, 21):  # RTM_NEWADDR, RTM_DELADDR
            attr = offset + 16 + 8
            while attr + 4 <= offset + length:
                alen, atype = struct.unpack_from("=HH", data, attr)
                if atype in (1, 2) and data[attr + 4 : attr + 8] == vip:
                    print(json.dumps({"at": at, "event": "new" if kind == 20 else "del"}),
                          flush=True)
                    break
                attr += (alen + 3) & ~3
        offset += (length + 3) & ~3 or len(data)
"""

# In the client's namespace. Commands on stdin, one JSON result line each:
#   primary <url>                  -> {"status": 200|503|null}
#   watch <node> <seconds> [<step-down url> <token>]
#       prints {"t0": ...} at once if it POSTs the step-down itself (t0 just before), then
#       starts a GET of /cluster/primary through the floating IP every 5 ms (each on its own
#       thread, 50 ms timeout) until <node> answers 200:
#       {"ok": when that answer arrived, "failed": attempts before it that nobody answered,
#        "step_down": the POST's status}
CLIENT_PROBE = r"""
import http.client, json, sys, threading, time
VIP = sys.argv[1]

def get(host, path, timeout):
    conn = http.client.HTTPConnection(host, 8888, timeout=timeout)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()

def step_down(url, token, out):
    host = url.split("//")[1].split(":")[0]
    conn = http.client.HTTPConnection(host, 8888, timeout=5)
    conn.request("POST", "/cluster/step-down", body=b"",
                 headers={"Authorization": "Bearer " + token})
    reply = conn.getresponse()
    out.append((reply.status, reply.read()[:200].decode(errors="replace")))
    conn.close()

def attempt(node, began, outcomes):
    try:
        status, body = get(VIP, "/cluster/primary", 0.05)
        ours = status == 200 and json.loads(body).get("node") == node
        outcomes.append((began, time.monotonic(), "ok" if ours else "other"))
    except (OSError, http.client.HTTPException):
        outcomes.append((began, time.monotonic(), "failed"))

for line in sys.stdin:
    words = line.split()
    if words[0] == "primary":
        host = words[1].split("//")[1].split(":")[0]
        try:
            status = get(host, "/cluster/primary", 1.0)[0]
        except OSError:
            status = None
        print(json.dumps({"status": status}), flush=True)
        continue
    node, seconds = words[1], float(words[2])
    posted = []
    if len(words) > 3:
        t0 = time.monotonic()
        threading.Thread(target=step_down, args=(words[3], words[4], posted), daemon=True).start()
        print(json.dumps({"t0": t0}), flush=True)
    outcomes, threads = [], []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not any(o[2] == "ok" for o in outcomes):
        if posted and posted[0][0] != 202:
            break
        began = time.monotonic()
        thread = threading.Thread(target=attempt, args=(node, began, outcomes), daemon=True)
        thread.start()
        threads.append(thread)
        time.sleep(0.005)
    for thread in threads:
        thread.join()
    oks = [o for o in outcomes if o[2] == "ok"]
    ok = min(o[1] for o in oks) if oks else None
    first = min(o[0] for o in oks) if oks else float("inf")
    failed = sum(1 for o in outcomes if o[2] == "failed" and o[0] < first)
    print(json.dumps({"ok": ok, "failed": failed, "step_down": posted}), flush=True)
"""


def _reply(process: NsProcess, start: int, key: str, timeout_s: float = 30.0) -> dict[str, Any]:
    line = process.wait_for(lambda text: key in json.loads(text), timeout_s, start)
    reply: dict[str, Any] = json.loads(line)
    return reply


class StepDownRefused(Exception):
    """The primary refused to hand over (its backup is not ready yet)."""


class Rig:
    def __init__(self, lan: Lan, cluster: LocalCluster) -> None:
        self.lan, self.cluster = lan, cluster
        self.client = lan[CLIENT].spawn([sys.executable, "-c", CLIENT_PROBE, VIP])
        self.monitors = {
            node: lan[i].spawn([sys.executable, "-c", ADDRESS_MONITOR, VIP])
            for i, node in enumerate(("n1", "n2"))
        }
        for monitor in self.monitors.values():
            monitor.wait_for(lambda text: "ready" in text, 10.0)

    def status(self, node: str) -> float | None:
        start = len(self.client.stdout.drain())
        self.client.send(f"primary {self.cluster.nodes[node].url}")
        return _reply(self.client, start, "status").get("status")

    def primary(self, timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [n for n in ("n1", "n2") if self.cluster.nodes[n].running]
            leading = [n for n in found if self.status(n) == 200]
            backups = [n for n in found if n not in leading]
            if len(leading) == 1 and len(found) == 2 and backups:
                return leading[0]
            time.sleep(0.2)
        raise RuntimeError("no primary with a live backup")

    def events(self, node: str, kind: str, since: float) -> list[float]:
        lines = self.monitors[node].stdout.drain()
        return [
            e["at"] for e in map(json.loads, lines) if e.get("event") == kind and e["at"] >= since
        ]

    def trial(self, mode: str) -> dict[str, float]:
        for _ in range(20):
            try:
                return self._trial(mode)
            except StepDownRefused:  # the backup restarted last trial is not caught up yet
                time.sleep(1.0)
        raise RuntimeError("step-down refused 20 times")

    def _trial(self, mode: str) -> dict[str, float]:
        old = self.primary()
        new = "n2" if old == "n1" else "n1"
        time.sleep(1.0)  # the backup settles into the line of succession
        start = len(self.client.stdout.drain())
        if mode == "step-down":
            url, token = self.cluster.nodes[old].url, self.cluster.token or ""
            self.client.send(f"watch {new} 5 {url} {token}")
            t0 = _reply(self.client, start, "t0")["t0"]
        else:
            self.client.send(f"watch {new} 5")
            time.sleep(0.05)  # the probe is polling
            t0 = time.monotonic()
            self.cluster.nodes[old].signal(signal.SIGTERM)
        result = _reply(self.client, start, "ok")
        if mode == "step-down" and result["step_down"][0][0] != 202:
            raise StepDownRefused(str(result["step_down"]))
        time.sleep(0.3)  # the monitors' lines arrive
        new_at = self.events(new, "new", t0)
        gone_at = self.events(old, "del", t0)
        if mode == "SIGTERM":
            self.cluster.nodes[old].wait(15.0)
            self.cluster.nodes[old].start()
        ok = result["ok"]
        return {
            "vip_new": (new_at[0] - t0) * 1000 if new_at else float("nan"),
            "vip_old_gone": (gone_at[0] - t0) * 1000 if gone_at else float("nan"),
            "client": (ok - t0) * 1000 if ok is not None else float("nan"),
            "failed": result["failed"],
        }


def _row(mode: str, trials: list[dict[str, float]]) -> str:
    def pct(key: str, q: float) -> str:
        values = sorted(t[key] for t in trials if t[key] == t[key])
        if not values:
            return "-"
        return f"{values[min(len(values) - 1, int(q * len(values)))]:.1f}"

    def median(key: str) -> str:
        values = [t[key] for t in trials if t[key] == t[key]]
        return f"{statistics.median(values):.1f}" if values else "-"

    failed = sum(int(t["failed"]) for t in trials)
    return (
        f"| {mode} | {len(trials)} | {median('vip_old_gone')} | {median('vip_new')} / "
        f"{pct('vip_new', 0.9)} | {median('client')} / {pct('client', 0.9)} | "
        f"{max(t['client'] for t in trials):.1f} | {failed} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20, help="per mode")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' logs")
    parser.add_argument(
        "--cold", action="store_true", help="hand over to the node restarted a second ago"
    )
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"SIGTERM": [], "step-down": []}
    with created(Lan(4, subnet="10.220.0.0/24", prefix="hbe")) as lan:
        cluster = witness_pair(lan, VIP, keep_dir=args.keep)
        try:
            cluster.start()
            rig = Rig(lan, cluster)
            for number in range(args.trials * 2):
                mode = ("SIGTERM", "step-down")[number % 2]
                trial = rig.trial(mode)
                results[mode].append(trial)
                print(mode, json.dumps(trial), flush=True)
                if mode == "SIGTERM" and not args.cold:
                    # The restarted node leads once, unmeasured, so that no measured handover
                    # goes to a process started a second ago (its first takeover runs code
                    # paths, and loads what lazy imports left, for the first time).
                    print("warm-up", json.dumps(rig.trial("step-down")), flush=True)
        finally:
            cluster.close()
            if args.keep:
                print(f"logs in {cluster.dir}")
    lines = [
        "## The floating IP on a graceful handover",
        "",
        f"`python tests/bench/bench_handover_endpoint.py --trials {args.trials}"
        f"{' --cold' if args.cold else ''}` (as root): two "
        "`ha-voice run` nodes and a witness, each in its own network namespace on a bridge, "
        "mDNS on, the floating IP on eth0, default (`wired`) timers (heartbeat 0.1 s); a client "
        "in a fourth namespace. From the signal (SIGTERM to the primary, or the client's POST "
        "/cluster/step-down): the floating IP leaving the old primary and appearing on the new "
        "one (rtnetlink events in their namespaces), and the first 200 from /cluster/primary "
        "through the floating IP answered by the new primary (a new connection every 5 ms, "
        "each on its own thread with a 50 ms timeout); `failed`: attempts in that window that "
        "no node answered (a client retries them). "
        + (
            "The node SIGTERMed is restarted and takes over the next step-down a second later."
            if args.cold
            else "The node SIGTERMed is restarted and leads once, unmeasured, before the "
            "next trial, so no measured handover goes to a process started a second ago."
        ),
        "",
        "| mode | n | old gone p50 ms | on new p50 / p90 ms | client p50 / p90 ms | "
        "client max ms | failed |",
        "|---|---|---|---|---|---|---|",
        _row("SIGTERM", results["SIGTERM"]),
        _row("step-down", results["step-down"]),
    ]
    write_section(lines, START, END)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
