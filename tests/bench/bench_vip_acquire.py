"""Benchmark: how long the floating IP takes to add and to remove, inside the daemon's process.

Not a pass/fail test. Run as root (it makes a network namespace of its own):

    python tests/bench/bench_vip_acquire.py [--rounds 200] [--against OLD_VIP_PY]

Times `FloatingIP.async_acquire()` (the address added and the first GARP armed) and
`async_release()` on a veth in a fresh namespace, from an asyncio loop as the daemon calls them.
With `--against`, the same for another version of ha_voice/cluster/vip.py (e.g. one from
`git show <commit>:ha_voice/cluster/vip.py`), alternating rounds, so both see the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench_sim_failover import write_section  # run as a script: its directory is on the path

NS = f"hvb{os.getpid()}"
START, END = "<!-- bench_vip_acquire:start -->", "<!-- bench_vip_acquire:end -->"

MEASURE = r"""
import asyncio, importlib.util, json, sys, time
spec = importlib.util.spec_from_file_location("vip_under_test", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["vip_under_test"] = module  # dataclasses look their module up
spec.loader.exec_module(module)

async def main(rounds):
    vip = module.FloatingIP("10.221.0.50/24", "veth0", garp_count=1, garp_repeat_count=0)
    await vip.async_reconcile_at_start()  # pyroute2 imported, as at a daemon's start
    acquire, release = [], []
    for _ in range(rounds):
        began = time.perf_counter()
        await vip.async_acquire()
        acquire.append(time.perf_counter() - began)
        await asyncio.sleep(0.005)
        began = time.perf_counter()
        await vip.async_release()
        release.append(time.perf_counter() - began)
    print(json.dumps({"acquire": acquire, "release": release}))

asyncio.run(main(int(sys.argv[2])))
"""


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _measure(vip_py: Path, rounds: int) -> dict[str, list[float]]:
    out = subprocess.run(
        ["ip", "netns", "exec", NS, sys.executable, "-c", MEASURE, str(vip_py), str(rounds)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    ).stdout
    result: dict[str, list[float]] = json.loads(out.splitlines()[-1])
    return result


def _pcts(values: list[float]) -> str:
    ordered = sorted(v * 1000 for v in values)
    return " / ".join(f"{ordered[int(q * (len(ordered) - 1))]:.2f}" for q in (0.5, 0.9, 0.99))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--against", type=Path, help="another vip.py to time the same way")
    args = parser.parse_args()
    current = Path(__file__).resolve().parents[2] / "ha_voice" / "cluster" / "vip.py"
    versions = {"this tree": current, **({str(args.against): args.against} if args.against else {})}
    _run("ip", "netns", "add", NS)
    try:
        _run("ip", "-n", NS, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        for link in ("lo", "veth0", "veth1"):
            _run("ip", "-n", NS, "link", "set", link, "up")
        _run("ip", "-n", NS, "addr", "add", "10.221.0.1/24", "dev", "veth0")
        results: dict[str, dict[str, list[float]]] = {
            name: {"acquire": [], "release": []} for name in versions
        }
        for _ in range(4):  # alternate, a quarter of the rounds at a time
            for name, path in versions.items():
                measured = _measure(path, args.rounds // 4)
                for key in ("acquire", "release"):
                    results[name][key] += measured[key]
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)
    against = f" --against {args.against}" if args.against else ""
    lines = [
        "## Adding and removing the floating IP",
        "",
        f"`python tests/bench/bench_vip_acquire.py --rounds {args.rounds}{against}` (as root; "
        f"load average {os.getloadavg()[0]:.1f} on 2 cores): `FloatingIP.async_acquire()` "
        "(address added, GARPs armed) and `async_release()` on a veth in a namespace of its "
        "own, called from an asyncio loop as the daemon does; rounds alternate between the "
        "versions. p50 / p90 / p99 ms.",
        "",
        "| vip.py | acquire | release |",
        "|---|---|---|",
        *(
            f"| {name} | {_pcts(measured['acquire'])} | {_pcts(measured['release'])} |"
            for name, measured in results.items()
        ),
    ]
    write_section(lines, START, END)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
