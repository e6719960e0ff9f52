"""Who may change things: bearer tokens, trusted networks, and forwards sealed with the cluster key.

Every route that changes state depends on `AUTHENTICATED` (one dependency, reused by every
such route); reads depend on nothing. A request passes with `Authorization: Bearer TOKEN`, TOKEN
a line of `api_token_file`, or from an address in `trusted_networks` without a token; anything
else gets 401 with `WWW-Authenticate: Bearer realm="ha-voice"` (RFC 6750 §3) and a message that
says where tokens come from. With neither configured, every such request is refused and the
message says how to configure them: a node is never open by accident.

Invariants:
- A token is hashed (SHA-256) and compared with every configured digest by
  `hmac.compare_digest`, without an early exit: the time taken depends neither on the token
  sent nor on which line it matches. No answer or log line echoes a token.
- A token that is sent is judged even from a trusted network: a wrong one is refused.
- The token file is re-read when its size, times, mode or inode change (checked on each
  mutating request and each scrape of `ha_voice_api_token_file_ok`, one `stat`). It fails
  closed: a version that is missing, exposed (mode) or malformed revokes every token until a
  good version replaces it — each such change logged once at error with the fix, the gauge 0,
  and every request with a token answered 401 saying that the file is refused and why (never
  which tokens it held). Keeping the old tokens would keep a token that was just revoked.
- `X-HA-Voice-Forwarded-By` is believed only with a valid seal (`forward_seal.py`); a marker
  without one is ignored — counted by reason, logged once at warning then at debug — and the
  request is judged as the client's own. A believed forward is judged on the client's behalf:
  its token is checked again here, against this node's tokens; without a token, the client's
  address (as the backup saw it) must be in this node's trusted_networks.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Gauge

from ha_voice.api.body import read_limited
from ha_voice.api.forward_seal import SEAL_FAILURES, Claim, ForwardSeal, Recipient, body_digest
from ha_voice.cluster.view import NodeView
from ha_voice.config import Config, read_accepted_keys, read_cluster_key
from ha_voice.errors import LocalError, RemoteError
from ha_voice.tokens import ApiToken, TokenFileError, read_token_file

__all__ = [
    "AUTHENTICATED",
    "AUTH_RESPONSES",
    "FORWARDED_BY",
    "FORWARD_SEAL",
    "Authenticator",
    "Principal",
    "authenticate",
    "authenticator",
    "install",
    "principal_of",
    "seal_headers",
    "sealing_member",
    "source_of",
    "verified_claim",
    "verified_forwarder",
]

log = logging.getLogger(__name__)

FORWARDED_BY: Final = "X-HA-Voice-Forwarded-By"
FORWARD_SEAL: Final = "X-HA-Voice-Forward-Auth"
REALM: Final = 'Bearer realm="ha-voice"'
REFUSALS: Final = (
    "not_configured",
    "no_credentials",
    "wrong_scheme",
    "invalid_token",
    "token_file_refused",
)
_WHERE_TOKENS: Final = (
    "tokens are the lines of api_token_file on the cluster's nodes (docs/operations.md, "
    "'API tokens'); clients send one with token=, HA_VOICE_TOKEN or --token-file"
)
_STATE_AUTH: Final = "ha_voice_auth"
_STATE_CLAIM: Final = "ha_voice_forward_claim"
_STATE_SEALER: Final = "ha_voice_forward_sealer"
_STATE_PRINCIPAL: Final = "ha_voice_principal"
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Principal:
    """Who sent a request: a token's name or a trusted network, where from, through whom."""

    kind: Literal["token", "network"]
    name: str  # the token's name, or the trusted network that let the address in
    address: str  # the client's address, as the node it reached saw it
    via: str | None = None  # the member that forwarded it here

    @property
    def label(self) -> str:
        """What a seal carries: `token:NAME` or `network`."""
        return f"token:{self.name}" if self.kind == "token" else "network"

    @property
    def source(self) -> str:
        """The journal's `source`: `NAME@ADDRESS` or `ADDRESS`, then ` via NODE`."""
        who = f"{self.name}@{self.address}" if self.kind == "token" else self.address
        return f"{who} via {self.via}" if self.via else who


class Unauthorized(RemoteError):
    """A request without acceptable credentials; `challenge` is its WWW-Authenticate."""

    def __init__(self, reason: str, message: str, challenge: str = REALM) -> None:
        super().__init__(reason, message)
        self.message = message
        self.challenge = challenge


@dataclass(frozen=True)
class _TokenState:
    """One version of the token file: its stat signature, its digests, or why it is refused."""

    signature: tuple[int, ...]
    digests: tuple[tuple[str, bytes], ...]
    refused: TokenFileError | None = None


class _TokenFile:
    """The digests of `api_token_file`, re-read when the file changes; while it is refused
    (missing, exposed or malformed), no token at all."""

    def __init__(self, path: Path) -> None:
        self.path = path
        signature = self._stat()
        self._state = _TokenState(signature, _digests(read_token_file(path)))
        self._lock = threading.Lock()  # the request path and a /metrics scrape both check

    def __len__(self) -> int:
        return len(self._state.digests)

    def problem(self) -> TokenFileError | None:
        """Why the file as it is now is refused, or None while its tokens are in force."""
        return self._current().refused

    def match(self, token: str) -> str | None:
        """The name of `token`, compared with every digest in constant time; None if unknown."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = None
        for name, expected in self._current().digests:
            if hmac.compare_digest(digest, expected):
                found = name
        return found

    def _current(self) -> _TokenState:
        """The state of the file as it is now: re-read (and logged) once per change."""
        with self._lock:
            signature = self._stat()
            if signature != self._state.signature:
                self._state = self._read(signature, self._state)
            return self._state

    def _read(self, signature: tuple[int, ...], before: _TokenState) -> _TokenState:
        try:
            digests = _digests(read_token_file(self.path))
        except TokenFileError as exc:
            log.error(
                "api_token_file %s is refused: every token gets 401 until the file is fixed: %s",
                self.path,
                exc,
            )
            return _TokenState(signature, (), exc)
        again = " (accepted again)" if before.refused is not None else ""
        log.warning("api_token_file %s re-read%s: %d token(s)", self.path, again, len(digests))
        return _TokenState(signature, digests)

    def _stat(self) -> tuple[int, ...]:
        try:
            st = os.stat(self.path)
        except OSError:
            return ()
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def _digests(tokens: list[ApiToken]) -> tuple[tuple[str, bytes], ...]:
    return tuple((t.name, hashlib.sha256(t.token.encode()).digest()) for t in tokens)


class Authenticator:
    """One node's rules: its tokens, its trusted networks and the seal of its members."""

    def __init__(
        self,
        *,
        node_id: str,
        tokens: _TokenFile | None,
        networks: Sequence[_Network],
        seal: ForwardSeal,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.node_id = node_id
        self.tokens = tokens
        self.networks = tuple(networks)
        self.seal = seal
        self._warned: set[str] = set()
        self.refusals = Counter(
            "ha_voice_api_auth_refusals",
            "Requests to mutating routes refused 401, by reason",
            ["reason"],
            registry=registry,
        )
        self.ignored_markers = Counter(
            "ha_voice_forward_markers_ignored",
            "X-HA-Voice-Forwarded-By markers not believed (no valid seal), by reason",
            ["reason"],
            registry=registry,
        )
        for reason in REFUSALS:
            self.refusals.labels(reason)
        for reason in SEAL_FAILURES:
            self.ignored_markers.labels(reason)
        if tokens is not None:
            # Read at scrape time, so a file that breaks is seen without waiting for a command.
            token_file_ok = Gauge(
                "ha_voice_api_token_file_ok",
                "1 while api_token_file's tokens are in force, 0 while the file is refused "
                "(missing, exposed or malformed: every token then gets 401)",
                registry=registry,
            )
            token_file_ok.set_function(lambda: 0.0 if tokens.problem() else 1.0)

    def token_file_problem(self) -> str | None:
        """Why api_token_file is refused now (a few words, no path, no token), else None."""
        refused = None if self.tokens is None else self.tokens.problem()
        return None if refused is None else refused.why

    @classmethod
    def from_config(
        cls, config: Config, registry: CollectorRegistry | None = None
    ) -> Authenticator:
        """The rules `config` sets; ConfigError if a secret is missing, exposed or malformed."""
        members = [spec.node_id for spec in config.peer_specs]
        if config.witness_spec is not None:
            members.append(config.witness_spec.node_id)
        seal = ForwardSeal(
            cluster=config.cluster,
            keys=(read_cluster_key(config), *read_accepted_keys(config)),
            node_id=config.node_id,
            members=members,
        )
        tokens = None if config.api_token_file is None else _TokenFile(config.api_token_file)
        networks = [ipaddress.ip_network(text) for text in config.trusted_networks]
        return cls(
            node_id=config.node_id, tokens=tokens, networks=networks, seal=seal, registry=registry
        )

    def check(self, authorization: str | None, address: str, via: str | None) -> Principal:
        """Who sent a request with this Authorization header from `address`; Unauthorized."""
        try:
            return self._check(authorization, address, via)
        except Unauthorized as exc:
            self.refusals.labels(exc.reason).inc()
            self._quietly(f"refused:{exc.reason}", "401 for %s: %s", address, exc.reason)
            suffix = f" (forwarded by {via})" if via else ""
            raise Unauthorized(exc.reason, exc.message + suffix, exc.challenge) from None

    def open_forward(
        self, marker: str, seal: str | None, method: str, path: str, view: NodeView
    ) -> Claim | RemoteError:
        """The verified claim of a forward, or why it is not believed (counted and logged);
        `view`: the cluster core's published view (this boot, the boot of `marker` admitted)."""
        peer = view.peers.get(marker)
        admitted = None if peer is None else peer.boot
        try:
            return self.seal.open(marker, seal, method, path, boot=view.boot_id, admitted=admitted)
        except RemoteError as exc:
            self.ignore_marker(exc.reason, str(exc))
            return exc

    def ignore_marker(self, reason: str, detail: str) -> None:
        """Count a forwarding marker that is not believed; warn the first time per reason."""
        self.ignored_markers.labels(reason).inc()
        self._quietly(f"marker:{reason}", "%s ignored: %s", FORWARDED_BY, detail)

    def _check(self, authorization: str | None, address: str, via: str | None) -> Principal:
        if not authorization:
            network = self._trusted(address)
            if network is not None:
                return Principal("network", str(network), address, via)
            raise self._no_credentials(address)
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":  # RFC 9110 §11.1: the scheme is case-insensitive
            raise Unauthorized(
                "wrong_scheme", f"only 'Authorization: Bearer TOKEN' is accepted; {_WHERE_TOKENS}"
            )
        if self.tokens is None:
            raise Unauthorized(
                "invalid_token",
                f"{self.node_id} has no api_token_file, so it knows no token: only clients in "
                "its trusted_networks get in, without one; fix: set api_token_file on every node "
                "(docs/operations.md, 'API tokens')",
                f'{REALM}, error="invalid_token"',
            )
        refused = self.tokens.problem()
        if refused is not None:
            raise Unauthorized(
                "token_file_refused",
                f"{self.node_id} accepts no token while its api_token_file is refused "
                f"({refused.why}); an operator must fix the file (the node's log says how)",
                f'{REALM}, error="invalid_token"',
            )
        name = self.tokens.match(token.strip())
        if name is None:
            raise Unauthorized(
                "invalid_token",
                f"the bearer token is not one of {self.node_id}'s tokens; {_WHERE_TOKENS}",
                f'{REALM}, error="invalid_token"',
            )
        return Principal("token", name, address, via)

    def _no_credentials(self, address: str) -> Unauthorized:
        if self.tokens is None and not self.networks:
            return Unauthorized(
                "not_configured",
                f"{self.node_id} takes no commands: it has no api_token_file and no "
                "trusted_networks; fix, on every node: ha-voice keygen, then set api_token_file "
                "(or trusted_networks for an isolated robot network) and restart "
                "(docs/operations.md, 'API tokens')",
            )
        outside = f"{address} is not in trusted_networks; " if self.networks else ""
        return Unauthorized(
            "no_credentials", f"{outside}send 'Authorization: Bearer TOKEN'; {_WHERE_TOKENS}"
        )

    def _trusted(self, address: str) -> _Network | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return next((net for net in self.networks if ip in net), None)

    def _quietly(self, key: str, message: str, *args: object) -> None:
        """Log at warning the first time for `key`, at debug after (hostile input is cheap)."""
        level = logging.DEBUG if key in self._warned else logging.WARNING
        self._warned.add(key)
        log.log(level, message, *args)


def install(app: FastAPI, config: Config) -> Authenticator:
    """Load `config`'s rules into `app` (ConfigError if they are unusable) and log them."""
    ctx = getattr(app.state, "ctx", None)
    registry = ctx.metrics.registry if ctx is not None else None
    auth = Authenticator.from_config(config, registry)
    setattr(app.state, _STATE_AUTH, auth)
    if config.trusted_networks:
        log.warning(
            "trusted_networks = %s: any client from these addresses may drive the robot, "
            "change settings and step down without a token",
            ", ".join(config.trusted_networks),
        )
    if auth.tokens is None and not auth.networks:
        log.warning(
            "no api_token_file and no trusted_networks: every command, setting and step-down "
            "is refused (docs/operations.md, 'API tokens')"
        )
    elif auth.tokens is not None:
        log.info("api_token_file %s holds %d token(s)", auth.tokens.path, len(auth.tokens))
    return auth


def authenticator(request: Request) -> Authenticator:
    """The rules `install` put on the app (installed now from the app's config if not yet)."""
    auth = getattr(request.app.state, _STATE_AUTH, None)
    if auth is None:
        auth = install(request.app, request.app.state.ctx.config)
    assert isinstance(auth, Authenticator)
    return auth


def verified_forwarder(request: Request) -> str | None:
    """The member whose sealed forward `request` is, or None for a client's own request (a
    marker without a valid seal is ignored and counted). The same answer however often it is
    asked about one request; the seal is only checked once."""
    claim = _claim(request)
    return None if claim is None else claim.node


def verified_claim(request: Request) -> Claim | None:
    """The verified claim of `request`'s seal (who sealed it, for which body), or None: what
    a members-only route checks, itself, against the body it reads (speech_handoff.py)."""
    return _claim(request)


def sealing_member(request: Request) -> str | None:
    """The member that sealed `request` as its forward to this node: its seal verified, or
    verified but for the boot (`unknown_boot`: this node has not heard that boot of it). Such a
    request is never forwarded again (forward.py's one hop), though only a verified seal is
    believed for the client it names (`verified_forwarder`)."""
    _claim(request)
    sealer: str | None = getattr(request.state, _STATE_SEALER)
    return sealer


_BEARER: Final = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A token from api_token_file (Authorization: Bearer TOKEN); not needed from "
    "trusted_networks.",
)


async def authenticate(
    request: Request,
    _documented: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
) -> Principal:
    """FastAPI dependency of every mutating route: the principal, or 401 (HTTPException)."""
    auth = authenticator(request)
    claim = await _claim_with_body(request, auth)
    client = request.client.host if request.client else "?"
    address = claim.address if claim else client
    try:
        principal = auth.check(
            request.headers.get("authorization"), address, claim.node if claim else None
        )
    except Unauthorized as exc:
        raise HTTPException(401, exc.message, {"WWW-Authenticate": exc.challenge}) from None
    setattr(request.state, _STATE_PRINCIPAL, principal)
    return principal


AUTHENTICATED: Final[DependsParam] = Depends(authenticate)
# For the `responses` of every route that depends on AUTHENTICATED: what /docs shows for 401.
AUTH_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    401: {
        "description": "no token, a wrong token or another scheme; WWW-Authenticate: Bearer "
        'realm="ha-voice"; the message says where tokens come from'
    }
}


def principal_of(request: Request) -> Principal:
    """The principal `authenticate` found; LocalError on a route that does not depend on it."""
    principal = getattr(request.state, _STATE_PRINCIPAL, None)
    if not isinstance(principal, Principal):
        raise LocalError(f"{request.url.path} is served without the AUTHENTICATED dependency")
    return principal


def source_of(request: Request) -> str:
    """Who sent `request`, for the journal: `principal_of(request).source`."""
    return principal_of(request).source


def seal_headers(request: Request, body: bytes, recipient: str) -> dict[str, str]:
    """The marker and seal with which this node forwards `request` (carrying `body`) to the
    member `recipient` (the primary); no other member believes the seal."""
    auth = authenticator(request)
    principal = principal_of(request)
    view = request.app.state.ctx.node.view
    peer = view.peers.get(recipient)
    boot = None if peer is None else peer.boot
    offset_s = None if peer is None else peer.clock_offset_s
    # Forwards go to the primary, whose heartbeats set both; without them (never, in practice)
    # the seal names no boot of it, and the primary judges the request as this node's own.
    to = Recipient(recipient, boot or 0, offset_s or 0.0)
    seal = auth.seal.seal(
        request.method,
        request.url.path,
        principal.address,
        principal.label,
        body,
        to,
        boot=view.boot_id,
    )
    return {FORWARDED_BY: auth.node_id, FORWARD_SEAL: seal}


def _claim(request: Request) -> Claim | None:
    """The request's forwarding claim, verified once and then remembered on the request."""
    state: Any = request.state
    if hasattr(state, _STATE_CLAIM):
        remembered: Claim | None = getattr(state, _STATE_CLAIM)
        return remembered
    marker = request.headers.get(FORWARDED_BY)
    claim = sealer = None
    if marker is not None:
        seal = request.headers.get(FORWARD_SEAL)
        # The core's published view, never its state.
        view = request.app.state.ctx.node.view
        opened = authenticator(request).open_forward(
            marker, seal, request.method, request.url.path, view
        )
        claim = opened if isinstance(opened, Claim) else None
        # A member sealed it, in a boot this node has not heard from (backups need not hear
        # each other): not believed for whom it speaks, yet never to be forwarded again.
        unknown_boot = isinstance(opened, RemoteError) and opened.reason == "unknown_boot"
        if claim is not None or unknown_boot:
            sealer = marker
    setattr(state, _STATE_CLAIM, claim)
    setattr(state, _STATE_SEALER, sealer)
    return claim


async def _claim_with_body(request: Request, auth: Authenticator) -> Claim | None:
    """`_claim`, and the body it was sealed for is the body that came; read only if sealed,
    and only up to the route's limit (413 beyond it, as the route itself would answer)."""
    claim = _claim(request)
    if claim is None:
        return None
    # The routes' own bounded reader: 413 past api_max_body_bytes, as the route would answer,
    # and the bytes kept on the request for the route.
    body = await read_limited(request, request.app.state.ctx.config.api_max_body_bytes)
    if not hmac.compare_digest(body_digest(body), claim.body_sha256):
        auth.ignore_marker("body_mismatch", f"the body is not the one {claim.node!r} sealed")
        setattr(request.state, _STATE_CLAIM, None)
        return None
    return claim
