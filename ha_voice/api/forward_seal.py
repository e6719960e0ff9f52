"""The seal on a forwarded request: proof, made with the cluster key, that a member forwarded it.

A backup that forwards a client's command to the primary adds `X-HA-Voice-Forwarded-By: NODE`
(the marker) and `X-HA-Voice-Forward-Auth` (the seal):

    v3;i=BOOT;t=RECIPIENT_MS;n=NONCE;r=RECIPIENT;j=RECIPIENT_BOOT;a=CLIENT_ADDRESS;p=PRINCIPAL;
        b=SHA256(BODY);m=MAC    (one line)

BOOT is the sender's boot id, RECIPIENT_BOOT the recipient's (16 hex digits each,
`NodeView.boot_id`); RECIPIENT is the member the seal is for (the primary it was sent to).
RECIPIENT_MS is the recipient's own monotonic clock in milliseconds as the sender reckons it from
the recipient's heartbeats (`PeerInfo.clock_offset_s`; an integer, signed: a monotonic clock's
origin is arbitrary). MAC = HMAC-SHA256(forward key, the canonical JSON list [label, NODE,
method, path, r, a, p, b, i, j, t, n]), base64url. The forward key is HMAC-SHA256(cluster key,
"ha-voice/v1/forward/" + cluster): its own label, so it is never the datagrams' MAC key
(protocol.derive_key), and a cluster name (letters, digits, `_`, `-`) cannot make one label
equal to the other.

Invariants:
- `open` verifies in this order and raises `RemoteError` with the first failing reason, one of
  `SEAL_FAILURES`: the seal's syntax (`bad_version` for a seal of an older release), that NODE
  is another member of this cluster, the MAC under any accepted key (a key rotation), that the
  seal is addressed to this node in this boot (`wrong_recipient`: a seal sniffed on its way to
  the primary is worth nothing at any other member, nor at this one once it restarted), that
  BOOT is the boot of NODE this node admitted by challenge-response (`unknown_boot`;
  sessions.py), freshness (`stale`) and that the MAC was not seen before (`replay`). Only then
  is the MAC remembered, so each seal opens once, at one node.
- No wall clock is read, here or there: a board without RTC battery before NTP seals as well as
  any. Freshness compares RECIPIENT_MS with the recipient's own monotonic clock: one clock, so
  |now - t| within `window_s` means what it says. The sender's reckoning lags by the heartbeat's
  one-way delay, and is bound to the recipient's boot (a restarted recipient, whose monotonic
  clock may restart with its host, refuses every seal made for its previous boot).
- The window bounds how long a MAC is remembered; at most `max_remembered` are. Past that the
  oldest remembered is forgotten and seals made before it are refused as `stale`, so a
  forgotten seal is never believed twice.
- The body is checked by the caller, against `Claim.body_sha256`, once it has read it — and it
  reads no more of it than the route would (auth.py): a valid seal buys no larger body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final

from ha_voice import clock
from ha_voice.errors import RemoteError

__all__ = [
    "SEAL_FAILURES",
    "Claim",
    "ForwardSeal",
    "Recipient",
    "body_digest",
    "derive_forward_key",
]

SEAL_FAILURES: Final = (
    "unsigned",
    "malformed",
    "bad_version",
    "not_member",
    "bad_mac",
    "wrong_recipient",
    "unknown_boot",
    "stale",
    "replay",
    "body_mismatch",
)
_VERSION: Final = "v3"
_OLDER: Final = ("v1", "v2")
_LABEL: Final = "ha-voice forward v3"
_FIELDS: Final = ("i", "t", "n", "r", "j", "a", "p", "b", "m")
_SIGNED: Final = ("r", "a", "p", "b", "i", "j", "t", "n")
_MAX_SEAL_CHARS: Final = 512
_B64: Final = re.compile(r"[A-Za-z0-9_-]+")
_BOOT: Final = re.compile(r"[0-9a-f]{16}")
_MS: Final = re.compile(r"-?[0-9]{1,15}")  # signed: a monotonic clock's origin is arbitrary
_ADDRESS: Final = re.compile(r"[0-9A-Fa-f.:]{1,45}|\?")  # an IPv4 or IPv6 address, or unknown
_PRINCIPAL: Final = re.compile(r"(token:[A-Za-z0-9._-]{1,40}|network)")
_NODE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")  # config's node_id pattern
# Past any forward's life (75 s at most) plus the reckoning's lag (a heartbeat's one-way delay).
DEFAULT_WINDOW_S: Final = 120.0
# A forward is one request a backup makes for one client request; at the 1000 commands a
# second of the flood benchmark over a 240 s memory (the window, both ways) this is 240 000
# entries (~40 MB) at worst; past it the oldest are forgotten first (and then refused as stale).
DEFAULT_MAX_REMEMBERED: Final = 250_000


@dataclass(frozen=True)
class Recipient:
    """The member a seal is for, as the sender knows it from its heartbeats: its node id, its
    boot id, and its monotonic clock minus the sender's (seconds, `PeerInfo.clock_offset_s`)."""

    node_id: str
    boot: int
    clock_offset_s: float


@dataclass(frozen=True)
class Claim:
    """What a verified seal says: who forwarded, for which client, with which body."""

    node: str
    address: str
    principal: str
    body_sha256: str


def derive_forward_key(cluster_key: bytes, cluster: str) -> bytes:
    """The forward key of `cluster`: HMAC(cluster key, "ha-voice/v1/forward/" + cluster)."""
    label = b"ha-voice/v1/forward/" + cluster.encode()
    return hmac.new(cluster_key, label, hashlib.sha256).digest()


def body_digest(body: bytes) -> str:
    """SHA-256 of `body`, base64url without padding: the seal's `b`."""
    return _b64(hashlib.sha256(body).digest())


class ForwardSeal:
    """Seals this node's forwards and opens the seals of other members' forwards."""

    def __init__(
        self,
        *,
        cluster: str,
        keys: Sequence[bytes],
        node_id: str,
        members: Collection[str],
        window_s: float = DEFAULT_WINDOW_S,
        max_remembered: int = DEFAULT_MAX_REMEMBERED,
    ) -> None:
        """`keys[0]` seals; every key opens (the cluster key, then one accepted for a rotation).
        `window_s`: how far, in seconds, a seal's time may be from the recipient's clock;
        `max_remembered`: MACs remembered against replay, at least 1."""
        self._keys = tuple(derive_forward_key(key, cluster) for key in keys)
        self._node_id = node_id
        self._members = frozenset(members) - {node_id}
        self._window_ms = int(window_s * 1000)
        self._max_remembered = max(1, max_remembered)
        self._seen: OrderedDict[str, int] = OrderedDict()  # MAC -> its t, recipient's clock
        self._floor_ms = -(10**15)  # seals made before this are stale: forgotten early

    def seal(
        self,
        method: str,
        path: str,
        address: str,
        principal: str,
        body: bytes,
        recipient: Recipient,
        *,
        boot: int,
    ) -> str:
        """The seal header for this node, in its boot `boot` (64-bit), forwarding `body` for a
        client at `address` to the member `recipient`, in its boot, and to no other."""
        recipient_ms = (clock.monotonic() + recipient.clock_offset_s) * 1000
        fields = {
            "i": f"{boot:016x}",
            "t": str(int(recipient_ms)),
            "n": secrets.token_urlsafe(12),
            "r": recipient.node_id,
            "j": f"{recipient.boot:016x}",
            "a": address,
            "p": principal,
            "b": body_digest(body),
        }
        mac = self._mac(self._keys[0], self._node_id, method, path, fields)
        return ";".join([_VERSION, *(f"{k}={v}" for k, v in fields.items()), f"m={mac}"])

    def open(
        self,
        node: str,
        seal: str | None,
        method: str,
        path: str,
        *,
        boot: int,
        admitted: int | None,
    ) -> Claim:
        """The claim of `node`'s seal on this request; RemoteError(reason) if not believed.
        `boot` is this node's boot id, `admitted` the boot of `node` it admitted
        (`PeerInfo.boot`), None if none."""
        if seal is None:
            raise RemoteError("unsigned", "a forwarding marker without a seal")
        fields = _parse(seal)
        if node not in self._members:
            raise RemoteError("not_member", f"{node[:40]!r} is not another member")
        expected = [self._mac(key, node, method, path, fields) for key in self._keys]
        if not any(hmac.compare_digest(mac, fields["m"]) for mac in expected):
            raise RemoteError("bad_mac", f"the seal of {node!r} does not verify")
        if fields["r"] != self._node_id:
            raise RemoteError(
                "wrong_recipient", f"{node!r} sealed it for {fields['r']!r}, not for this node"
            )
        if int(fields["j"], 16) != boot:
            raise RemoteError(
                "wrong_recipient", f"{node!r} sealed it for boot {fields['j']}, not this one"
            )
        if int(fields["i"], 16) != admitted:
            known = "none" if admitted is None else f"{admitted:016x}"
            raise RemoteError(
                "unknown_boot", f"{node!r} sealed it in boot {fields['i']}; admitted: {known}"
            )
        now_ms = int(clock.monotonic() * 1000)
        sent_ms = int(fields["t"])
        if abs(now_ms - sent_ms) > self._window_ms or sent_ms < self._floor_ms:
            raise RemoteError("stale", f"sealed {(now_ms - sent_ms) / 1000:.0f} s from now")
        self._remember(fields["m"], sent_ms, now_ms)
        return Claim(node, fields["a"], fields["p"], fields["b"])

    def remembered(self) -> int:
        """How many MACs are remembered now."""
        return len(self._seen)

    def _remember(self, mac: str, sent_ms: int, now_ms: int) -> None:
        seen = self._seen
        while seen and next(iter(seen.values())) < now_ms - self._window_ms:  # stale by now
            seen.popitem(last=False)
        if mac in seen:
            raise RemoteError("replay", "this seal was used before")
        seen[mac] = sent_ms
        while len(seen) > self._max_remembered:  # forgotten early: from now on stale
            _, forgotten_ms = seen.popitem(last=False)
            self._floor_ms = max(self._floor_ms, forgotten_ms + 1)

    @staticmethod
    def _mac(key: bytes, node: str, method: str, path: str, fields: dict[str, str]) -> str:
        signed = [_LABEL, node, method, path, *(fields[k] for k in _SIGNED)]
        message = json.dumps(signed, separators=(",", ":")).encode()
        return _b64(hmac.new(key, message, hashlib.sha256).digest())


def _parse(seal: str) -> dict[str, str]:
    """The seal's fields, each checked for shape; RemoteError("malformed") otherwise, or
    RemoteError("bad_version") for the seal of an older release."""
    if len(seal) > _MAX_SEAL_CHARS:
        raise RemoteError("malformed", f"a seal of {len(seal)} characters")
    version, *parts = seal.split(";")
    if version in _OLDER:
        raise RemoteError("bad_version", f"a {version} seal; this release opens {_VERSION} only")
    pairs = [part.partition("=") for part in parts]
    fields = {key: value for key, _, value in pairs}
    if version != _VERSION or [key for key, _, _ in pairs] != list(_FIELDS):
        raise RemoteError("malformed", "not v3;i=;t=;n=;r=;j=;a=;p=;b=;m=")
    shapes = (
        bool(_BOOT.fullmatch(fields["i"])),
        bool(_MS.fullmatch(fields["t"])),
        bool(_B64.fullmatch(fields["n"])),
        bool(_NODE.fullmatch(fields["r"])),
        bool(_BOOT.fullmatch(fields["j"])),
        bool(_ADDRESS.fullmatch(fields["a"])),
        bool(_PRINCIPAL.fullmatch(fields["p"])),
        bool(_B64.fullmatch(fields["b"])),
        bool(_B64.fullmatch(fields["m"])),
    )
    if not all(shapes):
        raise RemoteError("malformed", "a seal field of the wrong shape")
    return fields


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
