"""Load on the wire: heartbeats, acks and load reports carry it, bounded; a malformed load is
dropped and counted while the message that carried it is kept."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ha_voice.cluster.protocol import (
    LOAD_DROP_REASONS,
    MAX_DATAGRAM_BYTES,
    MAX_NODE_ID_BYTES,
    MAX_WIRE_INT,
    Codec,
    DecodeError,
    Heartbeat,
    HeartbeatAck,
    Load,
    LoadReport,
    LogPosition,
    derive_key,
)

KEY = bytes(range(32))
MAC_BYTES = 32
AT = {"source": ("192.0.2.1", 7405), "now": 0.0}
# format | flags | workers | running | queued | cpu | gpu | gpu memory (protocol docstring).
LOAD = struct.Struct("!BBBHHHHI")
BUSY = Load(ready=True, workers=2, running=2, queued=5, cpu=0.875, gpu=0.25, gpu_memory_mb=1536)
IDLE = Load(ready=True, workers=1, cpu=0.03)
NOT_READY = Load(ready=False, cpu=0.5)


def codec(node_id: str) -> Codec:
    return Codec(
        cluster="kitchen",
        cluster_key=KEY,
        node_id=node_id,
        boot_id=1,
        takeover_s=0.2,
        nonce=itertools.count(1).__next__,
    )


def carriers(load: Load | None, sender: str = "n1") -> list[Heartbeat | HeartbeatAck | LoadReport]:
    return [
        Heartbeat(sender, term=3, sent_at=1.5, log=LogPosition(2, 8), api_port=8888, load=load),
        HeartbeatAck(sender, term=3, sent_at=1.5, success=True, priority=7, load=load),
        LoadReport(sender, sent_at=-12.25, api_port=8443, load=load),
    ]


def name(message: object) -> str:
    load = getattr(message, "load", None)
    return f"{type(message).__name__}-{'none' if load is None else load.queued}"


def sign(unsigned: bytes) -> bytes:
    return unsigned + hmac.new(derive_key(KEY, "kitchen"), unsigned, hashlib.sha256).digest()


def with_tail(message: Heartbeat | HeartbeatAck | LoadReport, tail: bytes) -> bytes:
    """`message` encoded without a load, then `tail` in the load's place, signed again."""
    plain = codec("n1").encode("n2", dataclasses.replace(message, load=None))
    return sign(plain[:-MAC_BYTES] + tail)


@pytest.mark.parametrize(
    "message", [*carriers(BUSY), *carriers(IDLE), *carriers(NOT_READY), *carriers(None)], ids=name
)
def test_load_round_trips_on_heartbeats_acks_and_reports(message: object) -> None:
    receiver = codec("n2")
    assert receiver.decode(codec("n1").encode("n2", message), **AT) == message  # type: ignore[arg-type]
    assert sum(receiver.loads_dropped.values()) == 0


def test_encoding_clamps_every_field_into_its_range() -> None:
    wild = Load(
        ready=True, workers=1000, running=10**9, queued=-4, cpu=1.7, gpu=math.nan, gpu_memory_mb=-1
    )
    decoded = Load.decode(wild.encode())
    assert decoded == Load(
        ready=True, workers=255, running=65535, queued=0, cpu=1.0, gpu=0.0, gpu_memory_mb=0
    )
    assert Load.decode(Load(gpu_memory_mb=2**40).encode()).gpu_memory_mb == 2**32 - 2


def test_utilisation_travels_in_permille() -> None:
    assert Load.decode(Load(cpu=0.1234, gpu=0.9996).encode()) == Load(cpu=0.123, gpu=1.0)


@pytest.mark.parametrize(
    ("reason", "tail"),
    [
        ("bad_format", LOAD.pack(2, 1, 1, 0, 0, 0, 0, 0)),
        ("bad_format", b"\x00"),
        ("truncated", LOAD.pack(1, 1, 1, 0, 0, 0, 0, 0)[:-1]),
        ("truncated", LOAD.pack(1, 1, 1, 0, 0, 0, 0, 0) + b"\x00"),
        ("out_of_range", LOAD.pack(1, 1, 1, 0, 0, 1001, 0, 0)),
        ("out_of_range", LOAD.pack(1, 3, 1, 0, 0, 0, 1001, 0)),
        ("out_of_range", LOAD.pack(1, 4, 1, 0, 0, 0, 0, 0)),
    ],
)
@pytest.mark.parametrize("message", carriers(None), ids=name)
def test_a_malformed_load_is_dropped_and_counted_and_the_message_kept(
    reason: str, tail: bytes, message: Heartbeat | HeartbeatAck | LoadReport
) -> None:
    receiver = codec("n2")
    assert receiver.decode(with_tail(message, tail), **AT) == message
    assert receiver.loads_dropped == {r: int(r == reason) for r in LOAD_DROP_REASONS}


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(tail=st.binary(min_size=1, max_size=64))
def test_any_load_bytes_keep_the_heartbeat(tail: bytes) -> None:
    beat = Heartbeat("n1", term=3, sent_at=1.5)
    receiver = codec("n2")
    decoded = receiver.decode(with_tail(beat, tail), **AT)
    assert isinstance(decoded, Heartbeat)
    assert dataclasses.replace(decoded, load=None) == beat
    assert (decoded.load is None) == (sum(receiver.loads_dropped.values()) == 1)


def test_the_largest_heartbeat_with_a_load_fits_a_datagram() -> None:
    sender, recipient = "s" * MAX_NODE_ID_BYTES, "r" * MAX_NODE_ID_BYTES
    top = LogPosition(MAX_WIRE_INT, MAX_WIRE_INT)
    beat = Heartbeat(sender, MAX_WIRE_INT, 1e300, top, 255, 65535, MAX_WIRE_INT, BUSY)
    datagram = codec(sender).encode(recipient, beat)
    assert len(datagram) <= MAX_DATAGRAM_BYTES
    assert codec(recipient).decode(datagram, **AT) == beat


def test_a_load_report_with_a_non_finite_time_is_dropped() -> None:
    unsigned = with_tail(LoadReport("n1", 0.0), b"")[:-MAC_BYTES]
    infinite = sign(unsigned[:-10] + struct.pack("!dH", math.inf, 0))
    with pytest.raises(DecodeError) as caught:
        codec("n2").decode(infinite, **AT)
    assert caught.value.reason == "malformed"


def test_a_load_report_from_a_stranger_is_dropped_before_its_load_is_read() -> None:
    receiver = Codec(
        cluster="kitchen",
        cluster_key=KEY,
        node_id="n2",
        boot_id=1,
        members=("n1", "n2"),
        takeover_s=0.2,
        nonce=itertools.count(1).__next__,
    )
    bad_load = sign(codec("n9").encode("n2", LoadReport("n9", 0.0))[:-MAC_BYTES] + b"\x07")
    with pytest.raises(DecodeError) as caught:
        receiver.decode(codec("n9").encode("n2", LoadReport("n9", 0.0, load=BUSY)), **AT)
    assert caught.value.reason == "not_member"
    with pytest.raises(DecodeError):
        receiver.decode(bad_load, **AT)
    assert sum(receiver.loads_dropped.values()) == 0
