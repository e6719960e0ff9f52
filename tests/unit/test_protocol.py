"""The wire codec: round trips, size bound, every drop reason, the replay window, hostile bytes."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import itertools
import math
import random
import struct
from collections.abc import Callable
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ha_voice.cluster.protocol import (
    APPEND_BUDGET,
    DROP_REASONS,
    MAX_DATAGRAM_BYTES,
    MAX_ENTRY_BYTES,
    MAX_NODE_ID_BYTES,
    MAX_WIRE_INT,
    NOT_A_SUCCESSOR,
    PROTOCOL_VERSION,
    Address,
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
from ha_voice.cluster.sessions import CONFLICT_HOLD_S
from ha_voice.errors import LocalError, RemoteError

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
CLUSTER = "kitchen"
MAC_BYTES = 32
# magic 2s | version B | type B | cluster tag 8s | boot id Q | seq Q (protocol module docstring).
HEAD = struct.Struct("!2sBB8sQQ")
U64_MAX = 2**64 - 1
# Where every test datagram comes from, and when (the codec takes both from its shell).
PEER = ("192.0.2.1", 7405)
AT: dict[str, Any] = {"source": PEER, "now": 0.0}

PROPERTY = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def make_codec(
    node_id: str = "n1",
    *,
    boot_id: int = 1,
    cluster: str = CLUSTER,
    key: bytes = KEY,
    previous_keys: tuple[bytes, ...] = (),
    members: tuple[str, ...] | None = None,
) -> Codec:
    return Codec(
        cluster=cluster,
        cluster_key=key,
        node_id=node_id,
        boot_id=boot_id,
        previous_keys=previous_keys,
        members=members,
        takeover_s=0.2,
        nonce=itertools.count(1).__next__,
    )


def sign(unsigned: bytes, *, cluster: str = CLUSTER, key: bytes = KEY) -> bytes:
    """`unsigned` followed by the HMAC a codec of `cluster` with `key` expects."""
    return unsigned + hmac.new(derive_key(key, cluster), unsigned, hashlib.sha256).digest()


def resign(datagram: bytes) -> bytes:
    """`datagram` with its MAC recomputed, so only the edited bytes are wrong."""
    return sign(datagram[:-MAC_BYTES])


def craft(
    body: bytes,
    *,
    kind: int = Heartbeat.TYPE,
    magic: bytes = b"HV",
    version: int = PROTOCOL_VERSION,
    cluster: str = CLUSTER,
    boot_id: int = 1,
    seq: int = 1,
    sender: bytes = b"n1",
    recipient: bytes = b"n2",
    sender_len: int | None = None,
    key: bytes = KEY,
) -> bytes:
    """A signed datagram assembled field by field from the documented layout."""
    head = HEAD.pack(magic, version, kind, cluster_tag(cluster), boot_id, seq)
    length = len(sender) if sender_len is None else sender_len
    unsigned = head + bytes((length,)) + sender + bytes((len(recipient),)) + recipient + body
    return sign(unsigned, cluster=cluster, key=key)


def body_of(datagram: bytes, sender: str = "n1", recipient: str = "n2") -> bytes:
    start = HEAD.size + 1 + len(sender.encode()) + 1 + len(recipient.encode())
    return datagram[start:-MAC_BYTES]


def every_message(sender: str = "n1") -> list[Message]:
    """Each message type at least once, every field away from its default somewhere."""
    log = LogPosition(term=7, index=123_456_789)
    top = LogPosition(MAX_WIRE_INT, MAX_WIRE_INT)
    return [
        Heartbeat(sender, term=9, sent_at=1234.5678901234567, log=log, successor_rank=2),
        Heartbeat(sender, term=1, sent_at=0.0),
        Heartbeat(
            sender, term=MAX_WIRE_INT, sent_at=-1e300, log=top, successor_rank=NOT_A_SUCCESSOR
        ),
        HeartbeatAck(
            sender, term=9, sent_at=3.25e-7, success=True, log=log, priority=200, eligible=False
        ),
        HeartbeatAck(
            sender, term=MAX_WIRE_INT, sent_at=1e300, success=False, log=top, priority=255
        ),
        PreVoteRequest(sender, term=10, log=log),
        PreVoteResponse(sender, term=10, granted=True),
        PreVoteResponse(sender, term=3, granted=False),
        VoteRequest(sender, term=11, log=log, transfer=True),
        VoteRequest(sender, term=11, log=top, transfer=False),
        VoteResponse(sender, term=11, granted=True),
        VoteResponse(sender, term=4, granted=False),
        TimeoutNow(sender, term=12),
        Resign(sender, term=MAX_WIRE_INT),
        Heartbeat(sender, term=2, sent_at=1.0, api_port=65535, commit=MAX_WIRE_INT),
        Append(sender, term=5, prev=log, commit=9, entries=()),
        Append(
            sender,
            term=MAX_WIRE_INT,
            prev=LogPosition(4, 10),
            commit=MAX_WIRE_INT,
            entries=(
                Entry(11, 4, EntryKind.NOOP),
                Entry(12, 5, EntryKind.COMMAND, b"x" * MAX_ENTRY_BYTES),
                Entry(13, 5, EntryKind.OUTCOME, b"{}"),
                Entry(14, MAX_WIRE_INT, EntryKind.STATE, b"\x00"),
            ),
        ),
        AppendAck(sender, term=5, success=True, match=MAX_WIRE_INT),
        AppendAck(sender, term=6, success=False, match=0),
        Snapshot(sender, term=7, last=log, data=b"s" * MAX_ENTRY_BYTES),
        Snapshot(sender, term=1, last=LogPosition(), data=b""),
    ]


MESSAGE_TYPES = get_args(Message)


def type_name(message: Message) -> str:
    return type(message).__name__


def decode_error(receiver: Codec, datagram: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        receiver.decode(datagram, **AT)
    return caught.value


# --- round trip and size --------------------------------------------------------------------


def test_every_message_type_is_covered() -> None:
    assert {type(message) for message in every_message()} == set(MESSAGE_TYPES)
    assert len({cls.TYPE for cls in MESSAGE_TYPES}) == len(MESSAGE_TYPES)


@pytest.mark.parametrize("message", every_message(), ids=type_name)
def test_round_trip_preserves_every_field(message: Message) -> None:
    sender, receiver = make_codec("n1"), make_codec("n2")
    decoded = receiver.decode(sender.encode("n2", message), **AT)
    assert decoded == message
    for field in dataclasses.fields(message):
        # `==` would let 1 stand for True and an int for a float; the types must match too.
        assert type(getattr(decoded, field.name)) is type(getattr(message, field.name))


def test_round_trip_of_a_whole_conversation_in_order() -> None:
    sender, receiver = make_codec("n1"), make_codec("n2")
    messages = every_message()
    datagrams = [sender.encode("n2", message) for message in messages]
    assert [receiver.decode(datagram, **AT) for datagram in datagrams] == messages


def test_heartbeat_keeps_its_successor_rank_and_log_position() -> None:
    sender, receiver = make_codec("n1"), make_codec("n2")
    for rank in (0, 1, 254, NOT_A_SUCCESSOR):
        message = Heartbeat("n1", term=5, sent_at=0.1, log=LogPosition(4, 99), successor_rank=rank)
        decoded = receiver.decode(sender.encode("n2", message), **AT)
        assert isinstance(decoded, Heartbeat)
        assert decoded.successor_rank == rank
        assert decoded.log == LogPosition(4, 99)


def test_utf8_node_ids_round_trip() -> None:
    sender, receiver = make_codec("nœud-ü"), make_codec("jetson-ø")
    message = VoteRequest("nœud-ü", term=2, transfer=True)
    assert receiver.decode(sender.encode("jetson-ø", message), **AT) == message


def test_crafted_datagram_matches_the_documented_layout() -> None:
    message = Heartbeat("n1", term=9, sent_at=2.5, log=LogPosition(3, 4), successor_rank=1)
    body = struct.pack("!QdQQBHQ", 9, 2.5, 3, 4, 1, 0, 0)
    assert make_codec("n1", boot_id=77).encode("n2", message) == craft(body, boot_id=77, seq=1)


def test_sequence_numbers_count_up_from_one() -> None:
    sender = make_codec("n1")
    datagrams = [sender.encode("n2", TimeoutNow("n1", term=1)) for _ in range(3)]
    assert [HEAD.unpack_from(datagram)[5] for datagram in datagrams] == [1, 2, 3]


@pytest.mark.parametrize("message", every_message("s" * MAX_NODE_ID_BYTES), ids=type_name)
def test_largest_datagrams_fit_the_size_bound(message: Message) -> None:
    for recipient in ("r" * MAX_NODE_ID_BYTES, "é" * (MAX_NODE_ID_BYTES // 2)):
        datagram = make_codec("s" * MAX_NODE_ID_BYTES).encode(recipient, message)
        assert len(datagram) <= MAX_DATAGRAM_BYTES
        assert make_codec(recipient).decode(datagram, **AT) == message


def test_node_ids_beyond_the_bound_are_refused_locally() -> None:
    with pytest.raises(ValueError, match="node id"):
        make_codec("x" * (MAX_NODE_ID_BYTES + 1))
    with pytest.raises(ValueError, match="node id"):
        make_codec("n1").encode("x" * (MAX_NODE_ID_BYTES + 1), TimeoutNow("n1", term=1))


def test_encoding_a_message_from_someone_else_is_refused() -> None:
    with pytest.raises(ValueError, match="n3"):
        make_codec("n1").encode("n2", TimeoutNow("n3", term=1))


# --- drop reasons ---------------------------------------------------------------------------


def genuine(message: Message | None = None, *, recipient: str = "n2", boot_id: int = 1) -> bytes:
    message = message or Heartbeat("n1", term=3, sent_at=1.5, log=LogPosition(2, 8))
    return make_codec("n1", boot_id=boot_id).encode(recipient, message)


def patched(datagram: bytes, offset: int, new: bytes) -> bytes:
    return datagram[:offset] + new + datagram[offset + len(new) :]


def flipped(datagram: bytes, bit: int) -> bytes:
    data = bytearray(datagram)
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


def replayed(receiver: Codec) -> bytes:
    datagram = genuine()
    receiver.decode(datagram, **AT)
    return datagram


def another_boot(receiver: Codec) -> bytes:
    receiver.decode(genuine(boot_id=1), **AT)
    return genuine(boot_id=2)


def a_copy(receiver: Codec) -> bytes:
    real, copy = make_codec("n1", boot_id=1), make_codec("n1", boot_id=2)
    between(real, receiver, TimeoutNow("n1", term=1))
    # Challenged, both answer: the copy's next datagram is refused.
    between(copy, receiver, TimeoutNow("n1", term=1), source=COPY, others={PEER: real})
    return copy.encode("n2", TimeoutNow("n1", term=2))


COPY = ("192.0.2.9", 7405)


def between(
    sender: Codec,
    receiver: Codec,
    message: Message,
    *,
    source: Address = PEER,
    now: float = 0.0,
    others: dict[Address, Codec] | None = None,
) -> Message | str | None:
    """Deliver `message` and then every challenge and answer that follow, as a network between
    `sender` (at `source`), `receiver` (at RECEIVER) and `others` would: what `receiver` made
    of `message` (its drop reason if dropped)."""
    codecs = {**(others or {}), source: sender, RECEIVER: receiver}
    try:
        result: Message | str | None = receiver.decode(
            sender.encode(receiver.node_id, message), source=source, now=now
        )
    except DecodeError as exc:
        result = exc.reason
    pending = [(data, to, RECEIVER) for data, to in receiver.take_outgoing()]
    while pending:
        data, to, origin = pending.pop(0)
        target = codecs.get(to)
        if target is None:
            continue
        with contextlib.suppress(DecodeError):
            target.decode(data, source=origin, now=now)
        pending += [(reply, back, to) for reply, back in target.take_outgoing()]
    return result


RECEIVER = ("192.0.2.2", 7405)


def nan_heartbeat(_: Codec) -> bytes:
    return genuine(Heartbeat("n1", term=1, sent_at=math.nan))


def inf_ack(_: Codec) -> bytes:
    return genuine(HeartbeatAck("n1", term=1, sent_at=-math.inf, success=True))


def flag_of_two(_: Codec) -> bytes:
    datagram = genuine(PreVoteResponse("n1", term=4, granted=True))
    return resign(patched(datagram, len(datagram) - MAC_BYTES - 1, b"\x02"))


def heartbeat_body() -> bytes:
    return body_of(genuine())


def genuine_from(sender: str, *, vote: bool = False) -> bytes:
    message: Message = (
        VoteRequest(sender, term=50) if vote else Heartbeat(sender, term=50, sent_at=1.0)
    )
    return make_codec(sender).encode("n2", message)


TOO_BIG = MAX_WIRE_INT + 1
# Every integer a message carries, one at a time one past what SQLite can store.
OVERFLOWS: list[tuple[str, Callable[[Codec], bytes]]] = [
    (name, lambda _, m=message: genuine(m))
    for name, message in [
        ("Heartbeat.term", Heartbeat("n1", term=TOO_BIG, sent_at=1.0)),
        ("Heartbeat.log.term", Heartbeat("n1", 1, 1.0, log=LogPosition(TOO_BIG, 1))),
        ("Heartbeat.log.index", Heartbeat("n1", 1, 1.0, log=LogPosition(1, TOO_BIG))),
        ("Heartbeat.commit", Heartbeat("n1", 1, 1.0, commit=TOO_BIG)),
        ("HeartbeatAck.term", HeartbeatAck("n1", TOO_BIG, 1.0, success=True)),
        ("HeartbeatAck.log", HeartbeatAck("n1", 1, 1.0, True, log=LogPosition(1, TOO_BIG))),
        ("PreVoteRequest.term", PreVoteRequest("n1", term=TOO_BIG)),
        ("PreVoteResponse.term", PreVoteResponse("n1", term=TOO_BIG, granted=True)),
        ("VoteRequest.term", VoteRequest("n1", term=TOO_BIG)),
        ("VoteRequest.log", VoteRequest("n1", term=1, log=LogPosition(TOO_BIG, 0))),
        ("VoteResponse.term", VoteResponse("n1", term=TOO_BIG, granted=False)),
        ("TimeoutNow.term", TimeoutNow("n1", term=TOO_BIG)),
        ("Resign.term", Resign("n1", term=TOO_BIG)),
        ("Append.term", Append("n1", TOO_BIG, LogPosition(), 0)),
        ("Append.prev", Append("n1", 1, LogPosition(1, TOO_BIG), 0)),
        ("Append.commit", Append("n1", 1, LogPosition(), TOO_BIG)),
        (
            "Append.entries[0].term",
            Append("n1", 1, LogPosition(), 0, (Entry(1, TOO_BIG, EntryKind.NOOP),)),
        ),
        (
            "Append: last index",
            Append("n1", 1, LogPosition(1, MAX_WIRE_INT), 0, (Entry(TOO_BIG, 1, EntryKind.NOOP),)),
        ),
        ("AppendAck.match", AppendAck("n1", term=1, success=True, match=TOO_BIG)),
        ("Snapshot.last", Snapshot("n1", term=1, last=LogPosition(TOO_BIG, 2), data=b"")),
    ]
]


# Each case builds, against a fresh receiver "n2", a datagram that must be dropped for `reason`.
DROP_CASES: list[tuple[str, str, Callable[[Codec], bytes]]] = [
    ("truncated", "empty", lambda _: b""),
    ("truncated", "head only", lambda _: genuine()[: HEAD.size]),
    ("truncated", "one byte short of the minimum", lambda _: genuine()[: HEAD.size + 4 + 31]),
    ("oversized", "padded valid datagram", lambda _: genuine() + bytes(MAX_DATAGRAM_BYTES)),
    ("oversized", "one byte too many", lambda _: bytes(MAX_DATAGRAM_BYTES + 1)),
    ("malformed", "bad magic", lambda _: resign(patched(genuine(), 0, b"XV"))),
    ("malformed", "unknown type 0", lambda _: resign(patched(genuine(), 3, b"\x00"))),
    ("malformed", "unknown type 9", lambda _: resign(patched(genuine(), 3, b"\x09"))),
    ("malformed", "unknown type 255", lambda _: resign(patched(genuine(), 3, b"\xff"))),
    ("malformed", "flag byte 2", flag_of_two),
    ("malformed", "NaN sent_at", nan_heartbeat),
    ("malformed", "infinite sent_at", inf_ack),
    # A heartbeat's extra bytes are its load (test_protocol_load.py); a vote's are not.
    (
        "malformed",
        "body one byte long",
        lambda _: craft(struct.pack("!QB", 1, 1) + b"\x00", kind=VoteResponse.TYPE),
    ),
    ("malformed", "body one byte short", lambda _: craft(heartbeat_body()[:-1])),
    ("malformed", "body of another type", lambda _: craft(heartbeat_body(), kind=Resign.TYPE)),
    ("malformed", "sender length 0", lambda _: craft(heartbeat_body(), sender_len=0)),
    ("malformed", "sender length 65", lambda _: craft(heartbeat_body(), sender=b"s" * 65)),
    ("malformed", "sender length past the end", lambda _: craft(b"", sender_len=200)),
    # The sender swallows the recipient's length byte and id: nothing is left to read.
    ("malformed", "sender runs to the end", lambda _: craft(b"", sender_len=5)),
    ("malformed", "sender not UTF-8", lambda _: craft(heartbeat_body(), sender=b"\xff\xfe")),
    ("bad_version", "version 0", lambda _: resign(patched(genuine(), 2, b"\x00"))),
    ("bad_version", "version 2", lambda _: resign(patched(genuine(), 2, b"\x02"))),
    ("bad_version", "version 3 (no load)", lambda _: resign(patched(genuine(), 2, b"\x03"))),
    ("bad_version", "version 5", lambda _: resign(patched(genuine(), 2, b"\x05"))),
    ("wrong_cluster", "same key", lambda _: craft(heartbeat_body(), cluster="garage")),
    (
        "wrong_cluster",
        "codec of another cluster",
        lambda _: make_codec("n1", cluster="garage").encode("n2", TimeoutNow("n1", term=1)),
    ),
    ("bad_mac", "flipped body bit", lambda _: flipped(genuine(), 8 * (HEAD.size + 10) + 3)),
    ("bad_mac", "flipped MAC bit", lambda _: flipped(genuine(), 8 * (len(genuine()) - 1))),
    ("bad_mac", "flipped seq bit", lambda _: flipped(genuine(), 8 * (HEAD.size - 1))),
    ("bad_mac", "different key", lambda _: craft(heartbeat_body(), key=OTHER_KEY)),
    ("bad_mac", "MAC cut off", lambda _: genuine()[:-MAC_BYTES] + bytes(MAC_BYTES)),
    ("wrong_recipient", "addressed to n3", lambda _: genuine(recipient="n3")),
    ("replay", "same datagram twice", replayed),
    ("unverified_boot", "boot 2 after boot 1", another_boot),
    ("identity_conflict", "two live processes claim n1", a_copy),
    ("not_member", "a retired node with the key", lambda _: genuine_from("n9")),
    ("not_member", "a vote request from a stranger", lambda _: genuine_from("x", vote=True)),
    *[("malformed", f"{name} = 2**62", build) for name, build in OVERFLOWS],
]


def test_every_drop_reason_has_a_crafted_case() -> None:
    assert {reason for reason, _, _ in DROP_CASES} == set(DROP_REASONS)


@pytest.mark.parametrize(
    ("reason", "build"),
    [pytest.param(reason, build, id=f"{reason}: {name}") for reason, name, build in DROP_CASES],
)
def test_crafted_input_is_dropped_for_its_reason(
    reason: str, build: Callable[[Codec], bytes]
) -> None:
    receiver = make_codec("n2", members=("n1", "n2", "n3"))
    exc = decode_error(receiver, build(receiver))
    assert exc.reason == reason
    assert isinstance(exc, RemoteError)
    assert not isinstance(exc, LocalError)
    assert str(exc).startswith(reason)


def test_the_wrongly_addressed_datagram_is_fine_for_its_recipient() -> None:
    message = Resign("n1", term=2)
    datagram = genuine(message, recipient="n3")
    assert decode_error(make_codec("n2"), datagram).reason == "wrong_recipient"
    assert make_codec("n3").decode(datagram, **AT) == message


def test_a_stranger_is_dropped_before_the_replay_window_learns_of_it() -> None:
    # n9's datagram is refused; n9 joining the members later is not held against it.
    datagram = genuine_from("n9")
    assert decode_error(make_codec("n2", members=("n1", "n2")), datagram).reason == "not_member"
    assert make_codec("n2").decode(datagram, **AT).sender == "n9"


def test_during_a_key_rotation_both_keys_are_accepted_and_the_new_one_signs() -> None:
    old_node = make_codec("n1", key=KEY)
    new_node = make_codec("n1", key=OTHER_KEY, previous_keys=(KEY,))
    receiver = make_codec("n2", key=OTHER_KEY, previous_keys=(KEY,))
    assert receiver.decode(old_node.encode("n2", TimeoutNow("n1", term=1)), **AT).term == 1
    new_datagram = make_codec("n3", key=OTHER_KEY).encode("n2", Resign("n3", 2))
    assert receiver.decode(new_datagram, **AT).term == 2
    # A node still on the old key alone no longer understands the new key's datagrams.
    assert decode_error(make_codec("n2", key=KEY), new_datagram).reason == "bad_mac"
    assert new_node.encode("n2", Resign("n1", 3)) == make_codec("n1", key=OTHER_KEY).encode(
        "n2", Resign("n1", 3)
    )


def test_derived_key_is_what_the_crafted_datagrams_are_signed_with() -> None:
    # Guards the helpers: a re-signed but otherwise unchanged datagram is accepted.
    datagram = genuine()
    assert resign(datagram) == datagram
    assert craft(body_of(datagram)) == datagram


# --- replay window --------------------------------------------------------------------------


def numbered(count: int, *, boot_id: int = 1) -> list[bytes]:
    """Datagrams with seq 1..count from n1 to n2, index i carrying TimeoutNow(term=i)."""
    sender = make_codec("n1", boot_id=boot_id)
    return [sender.encode("n2", TimeoutNow("n1", term=term)) for term in range(count)]


@given(order=st.permutations(range(64)))
@settings(PROPERTY, max_examples=50)
def test_reordering_within_the_window_is_accepted_exactly_once(order: list[int]) -> None:
    datagrams = numbered(64)
    receiver = make_codec("n2")
    for index in order:
        assert receiver.decode(datagrams[index], **AT) == TimeoutNow("n1", term=index)
    for index in order:
        assert decode_error(receiver, datagrams[index]).reason == "replay"


def test_reordering_seeded_shuffle_of_a_long_stream() -> None:
    # Late by at most 40 places in a stream of 300: all in the window, each accepted once.
    datagrams = numbered(300)
    rng = random.Random(20240601)
    order = sorted(range(300), key=lambda i: i + rng.uniform(0, 40))
    receiver = make_codec("n2")
    assert [receiver.decode(datagrams[i], **AT) for i in order] == [
        TimeoutNow("n1", term=i) for i in order
    ]
    assert {decode_error(receiver, datagrams[i]).reason for i in order[-60:]} == {"replay"}


def test_window_edge_is_64_numbers_including_the_highest() -> None:
    datagrams = numbered(70)  # datagrams[i] has seq i + 1
    receiver = make_codec("n2")
    receiver.decode(datagrams[69], **AT)  # seq 70 is the highest
    assert decode_error(receiver, datagrams[4]).reason == "replay"  # seq 5: 65 behind
    assert decode_error(receiver, datagrams[5]).reason == "replay"  # seq 6: 64 behind
    assert receiver.decode(datagrams[6], **AT) == TimeoutNow("n1", term=6)  # seq 7: 63 behind
    assert decode_error(receiver, datagrams[6]).reason == "replay"


def test_window_slides_forward_with_the_highest() -> None:
    datagrams = numbered(200)
    receiver = make_codec("n2")
    receiver.decode(datagrams[99], **AT)  # seq 100
    receiver.decode(datagrams[149], **AT)  # seq 150: seq 86 and below leave the window
    assert decode_error(receiver, datagrams[80]).reason == "replay"  # seq 81: 69 behind
    assert receiver.decode(datagrams[120], **AT) == TimeoutNow("n1", term=120)  # seq 121: 29 behind
    assert decode_error(receiver, datagrams[99]).reason == "replay"


def test_a_new_boot_is_admitted_once_it_answers_and_the_old_one_stays_silent() -> None:
    """A restart (or a reset state directory, whatever the clock says): the new boot's first
    datagrams are dropped until it has answered its challenge and the old boot has left a probe
    unanswered for takeover_s; then its window starts afresh."""
    receiver = make_codec("n2")
    old_boot, new_boot = make_codec("n1", boot_id=9), make_codec("n1", boot_id=3)
    assert between(old_boot, receiver, TimeoutNow("n1", term=1)) == TimeoutNow("n1", term=1)
    old_datagram = old_boot.encode("n2", TimeoutNow("n1", term=2))
    # The old process is gone: only the new one answers (`between` knows no other).
    assert between(new_boot, receiver, TimeoutNow("n1", term=3), now=1.0) == "unverified_boot"
    assert between(new_boot, receiver, TimeoutNow("n1", term=4), now=1.1) == "unverified_boot"
    assert between(new_boot, receiver, TimeoutNow("n1", term=5), now=1.5) == TimeoutNow(
        "n1", term=5
    )
    # The old boot's datagrams, however new, are now another boot's: never admitted unanswered.
    with pytest.raises(DecodeError, match="unverified_boot"):
        receiver.decode(old_datagram, source=PEER, now=1.4)


def test_a_recorded_datagram_of_a_dead_boot_is_never_admitted() -> None:
    receiver = make_codec("n2")
    live, dead = make_codec("n1", boot_id=5), make_codec("n1", boot_id=6)
    recorded = [dead.encode("n2", TimeoutNow("n1", term=t)) for t in range(5)]
    between(live, receiver, TimeoutNow("n1", term=1))
    for i, datagram in enumerate(recorded):
        with pytest.raises(DecodeError, match="unverified_boot"):
            receiver.decode(datagram, source=COPY, now=10.0 * i)
        receiver.take_outgoing()  # challenges to a process that is no more


def test_two_live_processes_with_one_node_id_are_named_and_the_first_is_kept() -> None:
    receiver = make_codec("n2")
    real, copy = make_codec("n1", boot_id=1), make_codec("n1", boot_id=2)
    assert between(real, receiver, TimeoutNow("n1", term=1)) == TimeoutNow("n1", term=1)
    both = {PEER: real, COPY: copy}
    first = between(copy, receiver, TimeoutNow("n1", term=1), source=COPY, now=1.0, others=both)
    assert first == "unverified_boot"
    for t in range(2, 8):
        late = between(copy, receiver, TimeoutNow("n1", term=t), source=COPY, now=t, others=both)
        assert late == "identity_conflict"
        assert between(real, receiver, TimeoutNow("n1", term=t), now=t) == TimeoutNow("n1", term=t)
    named = "two processes claim node_id n1: 192.0.2.1:7405 and 192.0.2.9:7405"
    assert [c.describe() for c in receiver.conflicts(8.0)] == [named]
    assert [c.describe() for c in real.conflicts(8.0)] == [named]
    assert [(r.by, r.conflict.describe()) for r in copy.refusals(8.0)] == [("n2", named)]
    assert real.refusals(8.0) == ()
    assert receiver.conflicts(8.0 + CONFLICT_HOLD_S) == ()


def test_a_copy_heard_first_is_checked_against_the_expected_address() -> None:
    """First contact from somewhere else than where the peer should be: the process there is
    asked ("whoever you are"), and it is the one admitted."""
    receiver = make_codec("n2")
    receiver.expect("n1", PEER)
    real, copy = make_codec("n1", boot_id=1), make_codec("n1", boot_id=2)
    both = {PEER: real, COPY: copy}
    assert between(copy, receiver, TimeoutNow("n1", term=1), source=COPY, others=both) == (
        "unverified_boot"
    )
    assert between(real, receiver, TimeoutNow("n1", term=2)) == TimeoutNow("n1", term=2)
    late = between(copy, receiver, TimeoutNow("n1", term=3), source=COPY, now=5.0, others=both)
    assert late == "identity_conflict"


def test_a_node_that_moved_is_admitted_at_its_new_address() -> None:
    """Nobody answers at the expected address (a new DHCP lease): the newcomer gets in."""
    receiver = make_codec("n2")
    receiver.expect("n1", PEER)
    moved = make_codec("n1", boot_id=4)
    assert between(moved, receiver, TimeoutNow("n1", term=1), source=COPY) == "unverified_boot"
    assert between(moved, receiver, TimeoutNow("n1", term=2), source=COPY, now=1.0) == (
        TimeoutNow("n1", term=2)
    )


def test_replay_state_is_kept_per_sender() -> None:
    receiver = make_codec("n2")
    from_n1 = make_codec("n1").encode("n2", TimeoutNow("n1", term=1))
    from_n3 = make_codec("n3").encode("n2", TimeoutNow("n3", term=1))
    assert HEAD.unpack_from(from_n1)[5] == HEAD.unpack_from(from_n3)[5] == 1
    receiver.decode(from_n1, **AT)
    assert receiver.decode(from_n3, **AT) == TimeoutNow("n3", term=1)


def test_forged_huge_sequence_number_does_not_poison_the_window() -> None:
    receiver = make_codec("n2")
    datagrams = numbered(3)
    receiver.decode(datagrams[0], **AT)
    forged = craft(body_of(datagrams[1]), kind=TimeoutNow.TYPE, seq=U64_MAX, key=OTHER_KEY)
    assert decode_error(receiver, forged).reason == "bad_mac"
    resigned = resign(patched(datagrams[1], 20, struct.pack("!Q", U64_MAX)))
    tampered = flipped(resigned, 8 * len(resigned) - 1)
    assert decode_error(receiver, tampered).reason == "bad_mac"
    assert receiver.decode(datagrams[1], **AT) == TimeoutNow("n1", term=1)
    assert receiver.decode(datagrams[2], **AT) == TimeoutNow("n1", term=2)


def test_forged_newer_boot_does_not_make_the_genuine_boot_stale() -> None:
    receiver = make_codec("n2")
    datagrams = numbered(2, boot_id=5)
    receiver.decode(datagrams[0], **AT)
    forged = craft(body_of(datagrams[1]), kind=TimeoutNow.TYPE, boot_id=U64_MAX, key=OTHER_KEY)
    assert decode_error(receiver, forged).reason == "bad_mac"
    assert receiver.decode(datagrams[1], **AT) == TimeoutNow("n1", term=1)


def test_dropped_malformed_datagram_does_not_use_up_its_sequence_number() -> None:
    receiver = make_codec("n2")
    good = craft(heartbeat_body(), seq=7)
    bad = craft(heartbeat_body()[:-1], seq=7)
    assert decode_error(receiver, bad).reason == "malformed"
    assert isinstance(receiver.decode(good, **AT), Heartbeat)


def test_huge_authenticated_sequence_jump_is_accepted() -> None:
    receiver = make_codec("n2")
    first = craft(heartbeat_body(), seq=1)
    receiver.decode(first, **AT)
    message = receiver.decode(craft(heartbeat_body(), seq=U64_MAX), **AT)
    assert isinstance(message, Heartbeat)
    assert decode_error(receiver, first).reason == "replay"


# --- keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 15])
def test_short_keys_are_refused(length: int) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        derive_key(bytes(length), CLUSTER)
    with pytest.raises(ValueError, match="16 bytes"):
        make_codec(key=bytes(length))


def test_sixteen_byte_key_is_enough() -> None:
    assert len(derive_key(bytes(16), CLUSTER)) == 32


def test_clusters_sharing_a_key_get_different_mac_keys() -> None:
    assert derive_key(KEY, "kitchen") != derive_key(KEY, "garage")
    assert derive_key(KEY, "kitchen") != derive_key(OTHER_KEY, "kitchen")
    assert derive_key(KEY, "kitchen") == derive_key(KEY, "kitchen")
    assert derive_key(KEY, "kitchen") != KEY


def test_a_datagram_signed_for_another_cluster_fails_the_mac_even_with_our_tag() -> None:
    # Same key, other cluster's MAC key, our cluster tag: only derive_key keeps them apart.
    datagram = craft(heartbeat_body())
    foreign = sign(datagram[:-MAC_BYTES], cluster="garage")
    assert decode_error(make_codec("n2"), foreign).reason == "bad_mac"


# --- hostile bytes --------------------------------------------------------------------------


@given(data=st.binary(max_size=1500))
@PROPERTY
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    exc = decode_error(make_codec("n2"), data)
    assert exc.reason in DROP_REASONS


@given(
    kind=st.integers(0, 255),
    version=st.sampled_from([PROTOCOL_VERSION, 0, 2, 255]),
    sender=st.binary(max_size=80),
    sender_len=st.integers(0, 255),
    recipient=st.sampled_from([b"n2", b"n3", b"", b"n"]),
    body=st.binary(max_size=60),
    boot_id=st.integers(0, U64_MAX),
    seq=st.integers(0, U64_MAX),
)
@PROPERTY
def test_signed_junk_only_raises_decode_error(
    kind: int,
    version: int,
    sender: bytes,
    sender_len: int,
    recipient: bytes,
    body: bytes,
    boot_id: int,
    seq: int,
) -> None:
    # Correctly signed, so the parsing after the MAC check is exercised too.
    datagram = craft(
        body,
        kind=kind,
        version=version,
        sender=sender,
        sender_len=sender_len,
        recipient=recipient,
        boot_id=boot_id,
        seq=seq,
    )
    outcome: Message | DecodeError
    try:
        outcome = make_codec("n2").decode(datagram, **AT)
    except DecodeError as exc:
        outcome = exc
    if isinstance(outcome, DecodeError):
        assert outcome.reason in DROP_REASONS
    else:
        assert isinstance(outcome, MESSAGE_TYPES)
        assert kind == outcome.TYPE


def mutate(original: bytes, data: st.DataObject) -> bytes:
    how = data.draw(st.sampled_from(["flip", "truncate", "append", "overwrite"]), label="how")
    if how == "flip":
        bits = data.draw(st.lists(st.integers(0, 8 * len(original) - 1), min_size=1, max_size=8))
        for bit in bits:
            original = flipped(original, bit)
        return original
    if how == "truncate":
        return original[: data.draw(st.integers(0, len(original)), label="length")]
    if how == "append":
        return original + data.draw(st.binary(min_size=1, max_size=1200), label="tail")
    start = data.draw(st.integers(0, len(original)), label="start")
    return patched(original, start, data.draw(st.binary(min_size=1, max_size=64), label="new"))


@given(message=st.sampled_from(every_message()), data=st.data())
@PROPERTY
def test_mutated_datagram_is_dropped_unless_unchanged(
    message: Message, data: st.DataObject
) -> None:
    original = make_codec("n1").encode("n2", message)
    mutated = mutate(original, data)
    receiver = make_codec("n2")
    if mutated == original:
        assert receiver.decode(mutated, **AT) == message
    else:
        assert decode_error(receiver, mutated).reason in DROP_REASONS


def test_an_append_filled_to_its_budget_fits_between_the_longest_ids() -> None:
    data = b"x" * (APPEND_BUDGET - 2 * 11 - MAX_ENTRY_BYTES)
    entries = (
        Entry(2, 1, EntryKind.COMMAND, b"y" * MAX_ENTRY_BYTES),
        Entry(3, 1, EntryKind.COMMAND, data),
    )
    message = Append("s" * MAX_NODE_ID_BYTES, 1, LogPosition(1, 1), 1, entries)
    datagram = make_codec("s" * MAX_NODE_ID_BYTES).encode("r" * MAX_NODE_ID_BYTES, message)
    assert len(datagram) == MAX_DATAGRAM_BYTES
    assert make_codec("r" * MAX_NODE_ID_BYTES).decode(datagram, **AT) == message


@pytest.mark.parametrize(
    ("what", "body"),
    [
        (
            "an entry longer than the datagram",
            struct.pack("!QQQQH", 1, 0, 0, 0, 1) + struct.pack("!QBH", 1, 1, 50) + b"ab",
        ),
        ("bytes after the last entry", struct.pack("!QQQQH", 1, 0, 0, 0, 0) + b"junk"),
        (
            "an unknown entry kind",
            struct.pack("!QQQQH", 1, 0, 0, 0, 1) + struct.pack("!QBH", 1, 99, 0),
        ),
        ("more entries than there are", struct.pack("!QQQQH", 1, 0, 0, 0, 3)),
    ],
)
def test_malformed_appends_are_dropped_as_malformed(what: str, body: bytes) -> None:
    error = decode_error(make_codec("n2"), craft(body, kind=Append.TYPE))
    assert error.reason == "malformed", what


def test_a_snapshot_whose_length_lies_is_dropped() -> None:
    body = struct.pack("!QQQH", 1, 1, 5, 10) + b"short"
    error = decode_error(make_codec("n2"), craft(body, kind=Snapshot.TYPE))
    assert error.reason == "malformed"
