"""`python -m tests.chaos`: one chaos run from the host (as root), or the inner half of one.

PYTHONPATH=. python -m tests.chaos --topology three --seed 7 --faults 30
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import NoReturn

from tests.chaos.lan import ChaosSpec, run_outside
from tests.chaos.topology import TOPOLOGIES


def _exit_on_term(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds the `with` blocks: processes, tables, mounts


def _inner(spec_json: str) -> int:
    from tests.chaos.run import run_chaos

    signal.signal(signal.SIGTERM, _exit_on_term)
    spec = ChaosSpec(**json.loads(spec_json))
    run = run_chaos(spec)
    print(run.jepsen.report.summary(), file=sys.stderr)
    print(run.chaos.summary(), file=sys.stderr)
    print(run.replay(), file=sys.stderr)
    if not run.ok and spec.dump_dir:
        run.dump(Path(spec.dump_dir))
        print(f"history, faults, journals and samples in {spec.dump_dir}", file=sys.stderr)
    print(json.dumps(run.result()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["inner"]:
        return _inner(args[1])
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--topology", choices=sorted(TOPOLOGIES), default="three")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faults", type=int, default=30)
    parser.add_argument("--interval-s", type=float, default=2.0)
    parser.add_argument("--bound-s", type=float, default=2.0)
    parser.add_argument("--kinds", default="", help="comma-separated fault kinds")
    parser.add_argument("--dump-dir", default="")
    options = parser.parse_args(args)
    spec = ChaosSpec(
        options.topology,
        options.seed,
        options.faults,
        interval_s=options.interval_s,
        bound_s=options.bound_s,
        kinds=[k for k in options.kinds.split(",") if k],
        dump_dir=options.dump_dir,
    )
    result, err = run_outside(spec)
    print(err, file=sys.stderr)
    print(json.dumps({k: v for k, v in result.items() if k != "replay"}))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
