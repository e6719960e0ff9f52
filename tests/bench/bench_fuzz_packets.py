"""Benchmark: the cluster's packet decoder, and the election core behind it, under 200 000
hostile datagrams.

Not a pass/fail test (CI runs the hypothesis versions in tests/unit/test_protocol.py). Run:

    python tests/bench/bench_fuzz_packets.py [--inputs 200000] [--seed 1]

Five kinds of input, in equal parts, to a receiver that knows the members n1, n2, n3:
- random bytes (0 to 1500 long);
- junk signed with the cluster key: any type byte, sender, recipient and body, a valid MAC;
- genuine datagrams of every message type, mutated (bit flips, cuts, appends, overwrites) and
  signed again, so that the parsing after the MAC sees them;
- genuine messages with hostile values (terms and indices up to 2**64-1, NaN times, strangers as
  senders), signed;
- genuine messages of every type with random fields from a member: what the core must digest.
A decoder may only return a message or raise `DecodeError`; a datagram that decodes is then
stepped through an election core (a backup of a three-node cluster), which may only answer with
effects or raise `LocalError` for a broken invariant (two primaries in one term: the daemon exits
on it, loudly). Anything else is a crash; a call over 50 ms a hang.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import hmac
import itertools
import math
import random
import sys
import time
from dataclasses import replace

from ha_voice.cluster.election import Election
from ha_voice.cluster.events import HardState, MessageReceived, Tick
from ha_voice.cluster.membership import Membership
from ha_voice.cluster.protocol import (
    MAX_WIRE_INT,
    Append,
    AppendAck,
    Codec,
    DecodeError,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatAck,
    LogPosition,
    Message,
    PreVoteRequest,
    PreVoteResponse,
    Resign,
    Snapshot,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    cluster_tag,
    derive_key,
)
from ha_voice.cluster.timers import timers_for
from ha_voice.errors import LocalError

CLUSTER, KEY = "fuzz", b"k" * 32
MEMBERS = ("n1", "n2", "n3")
HANG_S = 0.05


def genuine(rng: random.Random, sender: str = "n1") -> Message:
    term = rng.randint(0, 50)
    log = LogPosition(rng.randint(0, term), rng.randint(0, 1000))
    entries = tuple(
        Entry(
            log.index + 1 + i, term, EntryKind(rng.randint(0, 3)), rng.randbytes(rng.randint(0, 40))
        )
        for i in range(rng.randint(0, 4))
    )
    return rng.choice(
        [
            Heartbeat(sender, term, rng.random() * 1e4, log, rng.randint(0, 255), 8888, 3),
            HeartbeatAck(sender, term, rng.random(), rng.random() < 0.5, log, 100, True),
            PreVoteRequest(sender, term, log),
            PreVoteResponse(sender, term, rng.random() < 0.5),
            VoteRequest(sender, term, log, rng.random() < 0.5),
            VoteResponse(sender, term, rng.random() < 0.5),
            TimeoutNow(sender, term),
            Resign(sender, term),
            Append(sender, term, log, rng.randint(0, 1000), entries),
            AppendAck(sender, term, rng.random() < 0.5, rng.randint(0, 1000)),
            Snapshot(sender, term, log, rng.randbytes(rng.randint(0, 100))),
        ]
    )


def hostile(rng: random.Random) -> Message:
    message = genuine(rng, rng.choice([*MEMBERS, "stranger", "n1" * 30]))
    big = rng.choice([MAX_WIRE_INT, MAX_WIRE_INT + 1, 2**64 - 1, 0])
    fields = {"term": big}
    if isinstance(message, Heartbeat | HeartbeatAck):
        fields["sent_at"] = rng.choice([math.nan, math.inf, -math.inf, 1e308])
    try:
        return replace(message, **fields)  # type: ignore[arg-type]
    except TypeError:
        return message


def sign(unsigned: bytes) -> bytes:
    return unsigned + hmac.new(derive_key(KEY, CLUSTER), unsigned, hashlib.sha256).digest()


def signed_junk(rng: random.Random) -> bytes:
    head = b"HV" + bytes([2, rng.randint(0, 255)]) + cluster_tag(CLUSTER)
    head += rng.randbytes(16)
    sender = rng.choice([b"n1", b"n3", b"", rng.randbytes(rng.randint(0, 70))])
    recipient = rng.choice([b"n2", b"n2", b"n9"])
    body = rng.randbytes(rng.randint(0, 120))
    return sign(
        head + bytes([len(sender) % 256]) + sender + bytes([len(recipient)]) + recipient + body
    )


def mutated(rng: random.Random, codecs: dict[str, Codec]) -> bytes:
    sender = rng.choice(MEMBERS[:1] + MEMBERS[2:])
    data = bytearray(codecs[sender].encode("n2", genuine(rng, sender))[:-32])
    how = rng.randrange(4)
    if how == 0:
        for _ in range(rng.randint(1, 8)):
            bit = rng.randrange(8 * len(data))
            data[bit // 8] ^= 1 << (bit % 8)
    elif how == 1:
        del data[rng.randrange(len(data)) :]
    elif how == 2:
        data += rng.randbytes(rng.randint(1, 200))
    else:
        at = rng.randrange(len(data))
        data[at : at + 8] = rng.randbytes(8)
    return sign(bytes(data))


def core() -> Election:
    return Election(
        membership=Membership.from_config("n2", ["n1", "n3"]),
        timers=timers_for("wired"),
        priority=100,
        hard_state=HardState(),
        rng=random.Random(0),
        now=0.0,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    nonces = itertools.count(1).__next__
    codecs = {
        n: Codec(
            cluster=CLUSTER, cluster_key=KEY, node_id=n, boot_id=1, takeover_s=0.1, nonce=nonces
        )
        for n in MEMBERS
    }
    # One receiver per kind: signed junk carries random boot ids, which would make a shared
    # receiver admit a junk boot first and refuse the genuine datagrams as unverified_boot.
    receivers = [
        Codec(
            cluster=CLUSTER,
            cluster_key=KEY,
            node_id="n2",
            boot_id=1,
            members=MEMBERS,
            takeover_s=0.1,
            nonce=nonces,
        )
        for _ in range(5)
    ]
    election = core()
    outcomes: collections.Counter[str] = collections.Counter()
    crashes: list[str] = []
    slowest = 0.0
    now = 0.0
    started = time.perf_counter()
    for i in range(args.inputs):
        kind = i % 5
        if kind == 4:
            data = codecs["n3"].encode("n2", genuine(rng, "n3"))
        elif kind == 0:
            data = rng.randbytes(rng.randint(0, 1500))
        elif kind == 1:
            data = signed_junk(rng)
        elif kind == 2:
            data = mutated(rng, codecs)
        else:
            message = hostile(rng)
            try:
                data = sign(codecs["n1"].encode("n2", message)[:-32])
            except (ValueError, OverflowError, Exception):
                data = rng.randbytes(64)
        t0 = time.perf_counter()
        try:
            decoded = receivers[kind].decode(data, source=("192.0.2.1", 7405), now=now)
            receivers[kind].take_outgoing()
        except DecodeError as exc:
            outcomes[f"dropped: {exc.reason}"] += 1
            decoded = None
        except Exception as exc:
            crashes.append(f"decode: {type(exc).__name__}: {exc}")
            decoded = None
        if decoded is not None:
            now += 0.001
            try:
                election.step(MessageReceived(decoded, now))
                election.step(Tick(now))
                outcomes["decoded and stepped"] += 1
            except LocalError as exc:
                outcomes[f"core refused loudly: {str(exc)[:40]}"] += 1
                election = core()
            except Exception as exc:
                crashes.append(f"core: {type(exc).__name__}: {exc}")
                election = core()
        slowest = max(slowest, time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    print(f"{args.inputs} inputs in {elapsed:.1f} s; slowest {slowest * 1000:.2f} ms")
    for outcome, count in sorted(outcomes.items(), key=lambda kv: -kv[1]):
        print(f"  {count:7d}  {outcome}")
    print(f"crashes: {len(crashes)}; hangs (> {HANG_S * 1000:.0f} ms): {int(slowest > HANG_S)}")
    for crash in crashes[:10]:
        print("  ", crash)
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
