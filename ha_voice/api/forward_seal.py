"""The seal on a forwarded request: proof, made with the cluster key, that a member forwarded it.

A backup that forwards a client's command to the primary adds `X-HA-Voice-Forwarded-By: NODE`
(the marker) and `X-HA-Voice-Forward-Auth` (the seal):

    v2;t=UNIX_MS;n=NONCE;r=RECIPIENT;a=CLIENT_ADDRESS;p=PRINCIPAL;b=SHA256(BODY);m=MAC

MAC = HMAC-SHA256(forward key, the canonical JSON list [label, NODE, method, path, r, a, p, b,
t, n]), base64url; RECIPIENT is the member the seal is for (the primary it was sent to). The
forward key is HMAC-SHA256(cluster key, "ha-voice/v1/forward/" + cluster): its own label, so it
is never the datagrams' MAC key (protocol.derive_key), and a cluster name (letters, digits, `_`,
`-`) cannot make one label equal to the other.

Invariants:
- `open` verifies in this order and raises `RemoteError` with the first failing reason, one of
  `SEAL_FAILURES`: the seal's syntax, that NODE is another member of this cluster, freshness
  (|now - t| within `window_s`), the MAC under any accepted key (a key rotation), that the seal
  is addressed to this node (`wrong_recipient`: a seal sniffed on its way to the primary is
  worth nothing at any other member), and that the MAC was not seen before (replay). Only
  then is the MAC remembered, so each seal opens once, at one node.
- Freshness compares wall clocks of two machines (monotonic clocks cannot be compared across
  them): `window_s` is wide, as Kerberos' five minutes is, because the replay cache, not the
  window, stops a replay; the window only bounds how long the cache must remember.
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

__all__ = ["SEAL_FAILURES", "Claim", "ForwardSeal", "body_digest", "derive_forward_key"]

SEAL_FAILURES: Final = (
    "unsigned",
    "malformed",
    "not_member",
    "stale",
    "bad_mac",
    "wrong_recipient",
    "replay",
    "body_mismatch",
)
_VERSION: Final = "v2"
_LABEL: Final = "ha-voice forward v2"
_FIELDS: Final = ("t", "n", "r", "a", "p", "b", "m")
_SIGNED: Final = ("r", "a", "p", "b", "t", "n")
_MAX_SEAL_CHARS: Final = 512
_B64: Final = re.compile(r"[A-Za-z0-9_-]+")
_ADDRESS: Final = re.compile(r"[0-9A-Fa-f.:]{1,45}|\?")  # an IPv4 or IPv6 address, or unknown
_PRINCIPAL: Final = re.compile(r"(token:[A-Za-z0-9._-]{1,40}|network)")
_NODE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")  # config's node_id pattern
# Past any forward's life (75 s at most) plus ordinary clock skew between NTP-less boards.
DEFAULT_WINDOW_S: Final = 120.0
# A forward is one request a backup makes for one client request; at the 1000 commands a
# second of the flood benchmark over a 240 s memory this is 240 000 entries (~40 MB) at worst;
# past it the oldest are forgotten first.
_MAX_REMEMBERED: Final = 250_000


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
    ) -> None:
        """`keys[0]` seals; every key opens (the cluster key, then one accepted for a rotation)."""
        self._keys = tuple(derive_forward_key(key, cluster) for key in keys)
        self._node_id = node_id
        self._members = frozenset(members) - {node_id}
        self._window_ms = int(window_s * 1000)
        self._seen: OrderedDict[str, int] = OrderedDict()  # MAC -> when it may be forgotten

    def seal(
        self, method: str, path: str, address: str, principal: str, body: bytes, recipient: str
    ) -> str:
        """The seal header for this node forwarding `body` for a client at `address` to the
        member `recipient`, and to no other."""
        fields = {
            "t": str(_now_ms()),
            "n": secrets.token_urlsafe(12),
            "r": recipient,
            "a": address,
            "p": principal,
            "b": body_digest(body),
        }
        mac = self._mac(self._keys[0], self._node_id, method, path, fields)
        return ";".join([_VERSION, *(f"{k}={v}" for k, v in fields.items()), f"m={mac}"])

    def open(self, node: str, seal: str | None, method: str, path: str) -> Claim:
        """The claim of `node`'s seal on this request; RemoteError(reason) if not believed."""
        if seal is None:
            raise RemoteError("unsigned", "a forwarding marker without a seal")
        fields = _parse(seal)
        if node not in self._members:
            raise RemoteError("not_member", f"{node[:40]!r} is not another member")
        sent_ms = int(fields["t"])
        now_ms = _now_ms()
        if abs(now_ms - sent_ms) > self._window_ms:
            raise RemoteError("stale", f"sealed {(now_ms - sent_ms) / 1000:.0f} s from now")
        expected = [self._mac(key, node, method, path, fields) for key in self._keys]
        if not any(hmac.compare_digest(mac, fields["m"]) for mac in expected):
            raise RemoteError("bad_mac", f"the seal of {node!r} does not verify")
        if fields["r"] != self._node_id:
            raise RemoteError(
                "wrong_recipient", f"{node!r} sealed it for {fields['r']!r}, not for this node"
            )
        self._remember(fields["m"], now_ms)
        return Claim(node, fields["a"], fields["p"], fields["b"])

    def _remember(self, mac: str, now_ms: int) -> None:
        while self._seen and next(iter(self._seen.values())) < now_ms:
            self._seen.popitem(last=False)
        if mac in self._seen:
            raise RemoteError("replay", "this seal was used before")
        self._seen[mac] = now_ms + 2 * self._window_ms
        if len(self._seen) > _MAX_REMEMBERED:
            self._seen.popitem(last=False)

    @staticmethod
    def _mac(key: bytes, node: str, method: str, path: str, fields: dict[str, str]) -> str:
        signed = [_LABEL, node, method, path, *(fields[k] for k in _SIGNED)]
        message = json.dumps(signed, separators=(",", ":")).encode()
        return _b64(hmac.new(key, message, hashlib.sha256).digest())


def _parse(seal: str) -> dict[str, str]:
    """The seal's fields, each checked for shape; RemoteError("malformed") otherwise."""
    if len(seal) > _MAX_SEAL_CHARS:
        raise RemoteError("malformed", f"a seal of {len(seal)} characters")
    version, *parts = seal.split(";")
    pairs = [part.partition("=") for part in parts]
    fields = {key: value for key, _, value in pairs}
    if version != _VERSION or [key for key, _, _ in pairs] != list(_FIELDS):
        raise RemoteError("malformed", "not v2;t=;n=;r=;a=;p=;b=;m=")
    shapes = (
        fields["t"].isdigit() and len(fields["t"]) <= 15,
        bool(_B64.fullmatch(fields["n"])),
        bool(_NODE.fullmatch(fields["r"])),
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


def _now_ms() -> int:
    return clock.wall_clock_us() // 1000
