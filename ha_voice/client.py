"""A client for an ha-voice cluster that follows the primary through failovers.

`HAVoiceClient` (blocking) and `AsyncHAVoiceClient` (asyncio) share one core, `_Core`: what a
call sends, what an answer means, where the next attempt goes and after what pause. The two
shells only do the I/O: httpx for HTTP, python-zeroconf for the endpoint
`<cluster>._ha-voice._tcp.local.` that only the primary advertises. tenacity runs the loop.

Invariants:
- One call, one key: every attempt of a command (`command`, `say`, `listen`, `set_listening`)
  carries the same `Idempotency-Key`, so the cluster runs it at most once however often it
  arrives.
  That key, and only that, makes retrying a POST safe; GETs are safe by nature.
- Retried, since the request either did not run or ran under that key: connection errors and
  timeouts (`httpx.TransportError`), 503 and 504, and 429 (over the rate limit, or the
  primary's queue of commands is full: nothing was journalled). The body's `retry_after_s` (else the
  `Retry-After` header) is a floor for the pause and `leader_url` is where the next attempt
  goes. A 307 or 308 is followed at once.
- Final, since asking again would get the same answer: 2xx; 502 from a command (the robot
  failed it and the server recorded that outcome), a `CommandResult` and no error; any other
  status raises `RequestError` after that single attempt.
- One deadline per call, `deadline_s`, spans every attempt, pause and resolution: no attempt
  outlives it, and no pause that would end past it is begun. Then `DeadlineExceeded` carries
  the key: call again with it later, and the cluster answers with the first outcome instead of
  running the command twice.
- Pauses back off exponentially with full jitter, from 0.05 s to at most 1 s, so clients cut
  off by the same failover do not come back in step (AWS, "Exponential Backoff And Jitter");
  when the server says when to come back (`retry_after_s`: it knows an election is under way),
  the pause is that, plus up to as much again of jitter.

Credentials: `token` (else the `HA_VOICE_TOKEN` environment variable) goes as
`Authorization: Bearer TOKEN` on every request; commands, settings and step-down need it unless
the client's address is in the nodes' `trusted_networks`. HTTPS is verified (`verify`, or the
cluster CA in `ca_file`).

TLS is a floor, never lowered by what the network says. A client given `ca_file`, `verify` or
an https `url` requires TLS: every address it did not choose itself — the endpoint mDNS
resolves, a `leader_url` hint, a redirect — is spoken to in https, whatever the answer names,
and verified; a plain-HTTP `url` with them is a ValueError, and no request ever leaves in
plain HTTP (checked before each send). mDNS is unauthenticated: anyone on the LAN can answer
for the endpoint, and its TXT `scheme=https` can only raise the scheme, never lower it. Without
TLS, such a responder receives the token and can answer "done" to a stop it never passed on.

Where requests go: to `url` if given (or the first of several, comma-separated, the next one
after each connection error), else to the address mDNS resolves for the endpoint. A
connection error forgets the current address. The next attempt then resolves the endpoint
again, except when `url` was given and `cluster` was not: then it goes to the next URL it
knows. With both given, `url` is the first choice and mDNS the fallback. Finding no primary
within `resolve_timeout_s` is final (`NoPrimaryError`).

Given URLs, the client learns the rest of the cluster from every answer: each names the other
members' API URLs (`X-HA-Voice-Members`, at most `MAX_URLS` kept) and the cluster's name
(`X-HA-Voice-Cluster`). So `JetsonVoiceClient(jetson_url="http://one-node:8888")`, the seed's
call, fails over to the other members when that node dies, as a client given every URL does;
once every known URL has refused in a row, it asks mDNS for the learned cluster's endpoint.

A fresh TCP connection per attempt (3 to 5 ms on 127.0.0.1): a pooled connection could still
point at the old primary after a failover, and an older daemon without TCP_NODELAY on its API
socket stalls every kept-alive request ~40 ms (Nagle against our delayed ACK).
"""

from __future__ import annotations

import logging
import os
import random
import ssl
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Generic, NoReturn, TypeVar

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    wait_random_exponential,
)
from zeroconf import InterfaceChoice, IPVersion, ServiceInfo, Zeroconf

from ha_voice import clock
from ha_voice.cluster.discovery import (
    ENDPOINT_SERVICE_TYPE,
    async_resolve_endpoint,
    endpoint_name,
    reachable_address,
)
from ha_voice.errors import HAVoiceError
from ha_voice.http_headers import CLUSTER_HEADER, MEMBERS_HEADER
from ha_voice.tokens import TOKEN_ENV

__all__ = [
    "DEFAULT_CLUSTER",
    "MAX_URLS",
    "AsyncHAVoiceClient",
    "ClientError",
    "CommandResult",
    "DeadlineExceeded",
    "HAVoiceClient",
    "JetsonVoiceClient",
    "NoPrimaryError",
    "RequestError",
    "ssl_context",
    "tls_floor",
]

_LOGGER = logging.getLogger(__name__)
_HttpT = TypeVar("_HttpT", httpx.Client, httpx.AsyncClient)

DEFAULT_CLUSTER: Final = "ha-voice"
# URLs a client keeps (given and learned): far above any cluster's size, and a bound on what an
# answer's member list can make it hold.
MAX_URLS: Final = 16
_BACKOFF: Final = wait_random_exponential(multiplier=0.05, max=1.0)
_NO_KEEPALIVE: Final = httpx.Limits(max_keepalive_connections=0)
_MIN_ATTEMPT_S: Final = 0.001  # httpx would read a zero timeout as "give up at once"
_RETRIED: Final = frozenset({429, 503, 504})
_REDIRECTS: Final = frozenset({307, 308})  # the two that keep the method and the body
_FAILED: Final = 502  # a command's recorded failure


class ClientError(HAVoiceError):
    """Base of every error the client raises on purpose."""


class NoPrimaryError(ClientError):
    """No node advertised the cluster's endpoint in time; `key` is the call's, if any."""

    def __init__(self, message: str, key: str | None) -> None:
        super().__init__(message)
        self.key = key


class RequestError(ClientError):
    """The server refused the request; asking again would get the same answer."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(f"HTTP {status}: {error}")
        self.status = status
        self.error = error


class DeadlineExceeded(ClientError):
    """No final answer within the deadline; call again with `key` to learn the outcome."""

    def __init__(self, message: str, key: str | None, attempts: int) -> None:
        super().__init__(message)
        self.key = key
        self.attempts = attempts


@dataclass(frozen=True)
class CommandResult:
    """The cluster's final answer to a command or a transcript."""

    status: str  # e.g. done, failed; for `say`: success, error, rejected
    key: str  # the Idempotency-Key every attempt carried
    node: str | None  # the node that executed it
    term: int | None
    index: int | None  # its place in the replicated journal
    duplicate: bool  # the key was seen before: this is the first outcome, not a second run
    attempts: int  # HTTP attempts this call made
    body: dict[str, Any]


@dataclass(frozen=True)
class _Request:
    """What every attempt of one call sends: the same method, path, body and key."""

    method: str
    path: str
    body: dict[str, Any] | None = None
    key: str | None = None
    content: bytes | None = None  # sent as is, instead of `body` as JSON (a recording)
    content_type: str | None = None  # of `content`
    timeout_s: float | None = None  # an attempt's, if not the client's (speech takes longer)

    def headers(self) -> dict[str, str]:
        headers = {} if self.key is None else {"Idempotency-Key": self.key}
        if self.content_type is not None:
            headers["Content-Type"] = self.content_type
        return headers


@dataclass(frozen=True)
class _Answer:
    """A final answer: its status code, its JSON object, the attempts it took."""

    status_code: int
    body: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class _Again:
    """No final answer: why, and what it says about the next attempt."""

    reason: str
    leader_url: str | None = None  # the primary, as the node that answered knows it
    location: str | None = None  # a redirect: the next attempt's whole URL, tried at once
    min_wait_s: float = 0.0  # Retry-After
    paced: bool = False  # the server said when to come back (`retry_after_s`): no backoff


class _TryAgain(Exception):
    """This attempt got no final answer; the call's state says where and when to try next."""


def _judge(
    url: str, status: int, headers: Mapping[str, str], body: dict[str, Any], is_command: bool
) -> _Again | None:
    """None for a final answer, `_Again` for a transient one; RequestError for a refusal."""
    if 200 <= status < 300 or (status == _FAILED and is_command):
        return None
    location = headers.get("location")
    if status in _REDIRECTS and location:
        target = str(httpx.URL(url).join(location))
        return _Again(f"HTTP {status} to {target}", location=target)
    if status in _RETRIED:
        return _Again(
            f"HTTP {status}: {_error_text(status, body)}",
            leader_url=_leader_url(body),
            min_wait_s=_retry_after_s(headers.get("retry-after"), body),
            paced=_hint_s(body) is not None,
        )
    raise RequestError(status, _error_text(status, body))


def _error_text(status: int, body: dict[str, Any]) -> str:
    error = body.get("error", body.get("detail"))  # ours, or FastAPI's validation errors
    return str(error) if error is not None else f"HTTP {status} without an error text"


def _leader_url(body: dict[str, Any]) -> str | None:
    value = body.get("leader_url")
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return value.rstrip("/")
    return None


def _retry_after_s(value: str | None, body: dict[str, Any]) -> float:
    """How long to wait at least: ha-voice's `retry_after_s` (sub-second: a failover takes about
    half a second, and the header cannot say less than 1), else Retry-After in seconds; 0 if
    absent or an HTTP date (RFC 9110 §10.2.3), never sent here."""
    hint = _hint_s(body)
    if hint is not None:
        return hint
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


def _hint_s(body: dict[str, Any]) -> float | None:
    hint = body.get("retry_after_s")
    if isinstance(hint, int | float) and not isinstance(hint, bool) and 0 <= hint <= 60:
        return float(hint)
    return None


def _json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object, or {} for anything else (a proxy's HTML page, say)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _result(key: str, answer: _Answer) -> CommandResult:
    body = answer.body
    node = body.get("executed_by") or body.get("node")
    return CommandResult(
        status=str(body.get("status", "")),
        key=key,
        node=node if isinstance(node, str) else None,
        term=_int_or_none(body.get("term")),
        index=_int_or_none(body.get("index")),
        duplicate=body.get("duplicate") is True,
        attempts=answer.attempts,
        body=body,
    )


def _entries(answer: _Answer) -> list[dict[str, Any]]:
    entries = answer.body.get("entries")
    if not isinstance(entries, list):
        raise RequestError(answer.status_code, "the journal answer has no 'entries' list")
    return entries


def ssl_context(ca_file: str | os.PathLike[str] | None) -> ssl.SSLContext | bool:
    """What httpx verifies servers with: the CA certificates in `ca_file`, else the system's."""
    return True if ca_file is None else ssl.create_default_context(cafile=os.fspath(ca_file))


def tls_floor(url: str, tls: bool) -> str:
    """`url` in https when `tls` is required: an address the network named (mDNS, a hint, a
    redirect) may raise the scheme the caller asked for, never lower it."""
    if tls and url.startswith("http://"):
        return "https://" + url.removeprefix("http://")
    return url


def _tls_required(
    urls: list[str], verify: ssl.SSLContext | bool | None, ca_file: object | None
) -> bool:
    """Whether the caller asked for TLS; ValueError for a plain-HTTP url that contradicts it."""
    required = (
        ca_file is not None
        or verify not in (None, False)
        or any(u.startswith("https://") for u in urls)
    )
    plain = [u for u in urls if not u.startswith("https://")]
    if required and plain:
        raise ValueError(
            f"url {plain[0]} is plain HTTP, but TLS was asked for (ca_file, verify or an https "
            "url): the token would travel in clear; fix: use https:// (or leave out ca_file)"
        )
    return required


def _bearer(token: str | None) -> dict[str, str]:
    """The Authorization header for `token`, or for `HA_VOICE_TOKEN` when `token` is None."""
    token = os.environ.get(TOKEN_ENV) if token is None else token
    return {"Authorization": f"Bearer {token}"} if token else {}


def _new_key() -> str:
    return str(uuid.uuid4())


def _robot_command(
    action: str, params: dict[str, float] | None, duration_s: float | None, key: str
) -> _Request:
    body = {"command": action, "params": params or {}, "duration_s": duration_s}
    return _Request("POST", "/api/robot/command", body, key)


def _listening(on: bool, key: str) -> _Request:
    return _Request("POST", "/api/voice/start" if on else "/api/voice/stop", None, key)


class _Call:
    """One call across its attempts: its request, its deadline, the pause before the next."""

    def __init__(self, request: _Request, deadline_s: float) -> None:
        self.request = request
        self.attempts = 0
        self.location: str | None = None
        self._deadline_s = deadline_s
        self._started_s = clock.monotonic()
        self._min_wait_s = 0.0
        self._paced = False
        self._last = "no attempt made"
        self._pause_after = 0  # the attempt whose pause `_pause_s` is
        self._pause_s = 0.0

    def remaining_s(self) -> float:
        return self._deadline_s - (clock.monotonic() - self._started_s)

    def attempt_timeout_s(self, timeout_s: float) -> float:
        return max(min(timeout_s, self.remaining_s()), _MIN_ATTEMPT_S)

    def again(self, url: str, again: _Again) -> NoReturn:
        """Note why attempt `attempts` was not final and what the next one does differently."""
        self.location, self._min_wait_s = again.location, again.min_wait_s
        self._paced = again.paced
        self._last = f"{self.request.method} {url}: {again.reason}"
        _LOGGER.debug("attempt %d, %s", self.attempts, self._last)
        raise _TryAgain(self._last)

    def pause_s(self, state: RetryCallState) -> float:
        """The pause after this attempt, drawn once: tenacity's stop and wait both ask."""
        if self._pause_after != state.attempt_number:
            self._pause_after = state.attempt_number
            if self._paced:  # the server's pace, with jitter so that clients do not march
                self._pause_s = self._min_wait_s * (1.0 + random.random())
            else:
                backoff = 0.0 if self.location else _BACKOFF(state)
                self._pause_s = max(backoff, self._min_wait_s)
        return self._pause_s

    def out_of_time(self, state: RetryCallState) -> bool:
        return self.pause_s(state) >= self.remaining_s()

    def give_up(self, state: RetryCallState) -> NoReturn:
        raise DeadlineExceeded(
            f"no final answer within {self._deadline_s:g} s after {self.attempts} attempts; "
            f"last: {self._last}",
            self.request.key,
            self.attempts,
        )


def _policy(call: _Call) -> dict[str, Any]:
    """tenacity's settings for one call, the same for both shells."""
    return {
        "retry": retry_if_exception_type(_TryAgain),
        "stop": call.out_of_time,
        "wait": call.pause_s,
        "retry_error_callback": call.give_up,
    }


def _resolve_endpoint(
    cluster: str, timeout_s: float, interfaces: list[str] | None
) -> tuple[str, int, dict[str, str]] | None:
    """The blocking twin of `discovery.async_resolve_endpoint`: (host, port, TXT) or None."""
    zc = Zeroconf(interfaces=interfaces or InterfaceChoice.All)
    try:
        info = ServiceInfo(ENDPOINT_SERVICE_TYPE, endpoint_name(cluster))
        found = info.request(zc, timeout_s * 1000)
    finally:
        zc.close()
    host = reachable_address(info.parsed_addresses(IPVersion.V4Only))
    if not found or host is None or info.port is None:
        return None
    return host, info.port, {key: value or "" for key, value in info.decoded_properties.items()}


_STATUS: Final = _Request("GET", "/api/voice/status")
_HEALTH: Final = _Request("GET", "/health")
_CLUSTER: Final = _Request("GET", "/cluster")
_COMMANDS: Final = _Request("GET", "/api/commands")


def _say(text: str, key: str) -> _Request:
    return _Request("POST", "/api/voice/listen", {"text": text}, key)


# An attempt to have a recording recognised: queued behind other speech work, on a node's CPU.
_LISTEN_TIMEOUT_S: Final = 30.0


def _listen(audio: bytes, content_type: str, key: str, dry_run: bool) -> _Request:
    path = "/api/voice/listen" + ("?dry_run=true" if dry_run else "")
    return _Request("POST", path, None, key, audio, content_type, _LISTEN_TIMEOUT_S)


def _journal(since: int, limit: int) -> _Request:
    return _Request("GET", f"/api/journal?since={since}&limit={limit}")


class _Core(Generic[_HttpT]):
    """What both clients share: the settings, and where the next attempt goes."""

    _http: _HttpT

    def __init__(
        self,
        *,
        url: str | None = None,
        cluster: str | None = None,
        deadline_s: float = 10.0,
        timeout_s: float = 3.0,
        token: str | None = None,
        resolve_timeout_s: float = 3.0,
        interfaces: list[str] | None = None,
        verify: ssl.SSLContext | bool | None = None,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        """Seconds throughout; `cluster` None means DEFAULT_CLUSTER; mDNS asks on `interfaces`.

        `url` is the first choice (several, comma-separated: any node will do, each is tried
        in turn after a connection error); mDNS is asked when it is None, and after a
        connection error when `cluster` was given. `token` None means `HA_VOICE_TOKEN` (""
        sends none); `ca_file`, if given, is what HTTPS is verified with, else `verify` (None:
        the system's CAs). `ca_file`, `verify` (but False) or an https `url` require TLS for
        every request, wherever the network says to go; ValueError with a plain-HTTP `url`.
        """
        if min(deadline_s, timeout_s, resolve_timeout_s) <= 0:
            raise ValueError("deadline_s, timeout_s and resolve_timeout_s must be > 0")
        self._urls = [u.strip().rstrip("/") for u in url.split(",")] if url else []
        self._tls = _tls_required(self._urls, verify, ca_file)
        self._url = self._urls[0] if self._urls else None
        self._cluster = cluster if cluster is not None else DEFAULT_CLUSTER
        self._may_resolve = url is None or cluster is not None
        self._learned_cluster: str | None = None  # from an answer, when only URLs were given
        self._refused_in_a_row = 0
        self._base_url = self._url
        self._deadline_s = deadline_s
        self._timeout_s = timeout_s
        self._resolve_timeout_s = resolve_timeout_s
        self._interfaces = interfaces
        verified = ssl_context(ca_file) if ca_file is not None else verify
        self._http = self._open(_bearer(token), True if verified is None else verified)

    def _open(self, headers: dict[str, str], verify: ssl.SSLContext | bool) -> _HttpT:
        """The shell's HTTP client, sending `headers` on every request, verifying HTTPS."""
        raise NotImplementedError

    def _target(self, call: _Call) -> str | None:
        """The next attempt's URL; None while the endpoint must be resolved first."""
        if call.location is not None:
            return call.location
        return None if self._base_url is None else self._base_url + call.request.path

    def _resolve_within_s(self, call: _Call) -> float:
        return max(min(self._resolve_timeout_s, call.remaining_s()), _MIN_ATTEMPT_S)

    def _found(self, call: _Call, found: tuple[str, int, dict[str, str]] | None) -> str:
        """The URL for `call` at the resolved endpoint, from now on the client's address."""
        if found is None:
            raise NoPrimaryError(
                f"no primary advertises {endpoint_name(self._cluster)}: its nodes are down, "
                "elect no one (too few voters hear each other), or their mDNS does not reach "
                "this host; `ha-voice status` or `ha-voice send` names which",
                call.request.key,
            )
        # Unauthenticated: the TXT record may raise the scheme, never lower it.
        scheme = "https" if self._tls or found[2].get("scheme") == "https" else "http"
        self._base_url = f"{scheme}://{found[0]}:{found[1]}"
        return self._base_url + call.request.path

    def _sent(self, call: _Call, url: str) -> httpx.Timeout:
        """Count the attempt about to be sent to `url`; its timeout. Never in plain HTTP when
        TLS was asked for: the token would go in clear to an address the network named."""
        if self._tls and not url.startswith("https://"):
            raise ClientError(f"refused to send to {url} in plain HTTP: this client requires TLS")
        call.attempts += 1
        return httpx.Timeout(call.attempt_timeout_s(call.request.timeout_s or self._timeout_s))

    def _settle(self, call: _Call, url: str, response: httpx.Response) -> _Answer:
        """The final answer in `response`, or raise what `_judge` decided."""
        self._refused_in_a_row = 0
        self._learn(response.headers)
        body = _json_object(response)
        is_command = call.request.key is not None  # for a command, 502 is its recorded outcome
        again = _judge(url, response.status_code, response.headers, body, is_command)
        if again is None:
            return _Answer(response.status_code, body, call.attempts)
        if again.leader_url is not None:
            self._base_url = tls_floor(again.leader_url, self._tls)
        if again.location is not None:
            again = replace(again, location=tls_floor(again.location, self._tls))
        call.again(url, again)

    def _learn(self, headers: Mapping[str, str]) -> None:
        """Keep the members and the cluster name an answer names (only with URLs given)."""
        if not self._urls:
            return
        for member in headers.get(MEMBERS_HEADER, "").split(","):
            found = tls_floor(member.strip().rstrip("/"), self._tls)
            known = found in self._urls or len(self._urls) >= MAX_URLS
            if found.startswith(("http://", "https://")) and not known:
                self._urls.append(found)
        name = headers.get(CLUSTER_HEADER, "").strip()
        if name and not self._may_resolve:
            self._learned_cluster = name

    def _lost(self, call: _Call, url: str, exc: httpx.TransportError) -> NoReturn:
        """After a connection error or a timeout: forget the address, try again (at the next
        URL, or where mDNS says; mDNS too once every known URL has failed in a row and the
        cluster's name was learned)."""
        self._refused_in_a_row += 1
        if len(self._urls) > 1:
            self._url = self._urls[(self._urls.index(self._url or "") + 1) % len(self._urls)]
        learned = self._learned_cluster
        if learned is not None and self._refused_in_a_row >= len(self._urls):
            self._cluster, self._may_resolve = learned, True  # from now on as if it was given
        self._base_url = None if self._may_resolve else self._url
        call.again(url, _Again(f"{type(exc).__name__}: {exc}"))


class HAVoiceClient(_Core[httpx.Client]):
    """The blocking client; one call at a time."""

    def command(
        self,
        action: str,
        params: dict[str, float] | None = None,
        duration_s: float | None = None,
        key: str | None = None,
    ) -> CommandResult:
        """Run `action` on the robot through the primary, at most once per key."""
        key = key or _new_key()
        return _result(key, self._call(_robot_command(action, params, duration_s, key)))

    def say(self, text: str, key: str | None = None) -> CommandResult:
        """Hand the primary a transcript, as if it had heard it."""
        key = key or _new_key()
        return _result(key, self._call(_say(text, key)))

    def listen(
        self,
        audio: bytes,
        content_type: str = "application/octet-stream",
        key: str | None = None,
        dry_run: bool = False,
    ) -> CommandResult:
        """Hand the primary a recording (WAV, FLAC, Ogg, MP3, WebM bytes; octet-stream: the
        node tells the format); with `dry_run`, it is recognised and nothing runs."""
        key = key or _new_key()
        return _result(key, self._call(_listen(audio, content_type, key, dry_run)))

    def status(self) -> dict[str, Any]:
        return self._call(_STATUS).body

    def health(self) -> dict[str, Any]:
        return self._call(_HEALTH).body

    def cluster_state(self) -> dict[str, Any]:
        return self._call(_CLUSTER).body

    def journal(self, since: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        return _entries(self._call(_journal(since, limit)))

    def commands(self) -> dict[str, Any]:
        return self._call(_COMMANDS).body

    def set_listening(self, on: bool, key: str | None = None) -> dict[str, Any]:
        return self._call(_listening(on, key or _new_key())).body

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HAVoiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, headers: dict[str, str], verify: ssl.SSLContext | bool) -> httpx.Client:
        transport = httpx.HTTPTransport(limits=_NO_KEEPALIVE, verify=verify)
        return httpx.Client(transport=transport, headers=headers)

    def _call(self, request: _Request) -> _Answer:
        call = _Call(request, self._deadline_s)
        return Retrying(**_policy(call))(self._attempt, call)

    def _attempt(self, call: _Call) -> _Answer:
        url = self._target(call)
        if url is None:
            within_s = self._resolve_within_s(call)
            url = self._found(call, _resolve_endpoint(self._cluster, within_s, self._interfaces))
        timeout, request = self._sent(call, url), call.request
        try:
            response = self._http.request(
                request.method,
                url,
                json=request.body,
                content=request.content,
                headers=request.headers(),
                timeout=timeout,
            )
        except httpx.TransportError as exc:
            self._lost(call, url, exc)
        return self._settle(call, url, response)


class AsyncHAVoiceClient(_Core[httpx.AsyncClient]):
    """The asyncio twin of `HAVoiceClient`: the same calls, awaited."""

    async def command(
        self,
        action: str,
        params: dict[str, float] | None = None,
        duration_s: float | None = None,
        key: str | None = None,
    ) -> CommandResult:
        key = key or _new_key()
        return _result(key, await self._call(_robot_command(action, params, duration_s, key)))

    async def listen(
        self,
        audio: bytes,
        content_type: str = "application/octet-stream",
        key: str | None = None,
        dry_run: bool = False,
    ) -> CommandResult:
        key = key or _new_key()
        return _result(key, await self._call(_listen(audio, content_type, key, dry_run)))

    async def say(self, text: str, key: str | None = None) -> CommandResult:
        key = key or _new_key()
        return _result(key, await self._call(_say(text, key)))

    async def status(self) -> dict[str, Any]:
        return (await self._call(_STATUS)).body

    async def health(self) -> dict[str, Any]:
        return (await self._call(_HEALTH)).body

    async def cluster_state(self) -> dict[str, Any]:
        return (await self._call(_CLUSTER)).body

    async def journal(self, since: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        return _entries(await self._call(_journal(since, limit)))

    async def commands(self) -> dict[str, Any]:
        return (await self._call(_COMMANDS)).body

    async def set_listening(self, on: bool, key: str | None = None) -> dict[str, Any]:
        return (await self._call(_listening(on, key or _new_key()))).body

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncHAVoiceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _open(self, headers: dict[str, str], verify: ssl.SSLContext | bool) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(limits=_NO_KEEPALIVE, verify=verify)
        return httpx.AsyncClient(transport=transport, headers=headers)

    async def _call(self, request: _Request) -> _Answer:
        call = _Call(request, self._deadline_s)
        answer: _Answer = await AsyncRetrying(**_policy(call))(self._attempt, call)
        return answer

    async def _attempt(self, call: _Call) -> _Answer:
        url = self._target(call)
        if url is None:
            within_s = self._resolve_within_s(call)
            found = await async_resolve_endpoint(self._cluster, within_s, self._interfaces)
            url = self._found(call, found)
        timeout, request = self._sent(call, url), call.request
        try:
            response = await self._http.request(
                request.method,
                url,
                json=request.body,
                content=request.content,
                headers=request.headers(),
                timeout=timeout,
            )
        except httpx.TransportError as exc:
            self._lost(call, url, exc)
        return self._settle(call, url, response)


class JetsonVoiceClient:
    """The seed's client, now following the primary: it reports failures, never raises them."""

    def __init__(
        self,
        jetson_url: str | None = None,
        *,
        cluster: str | None = None,
        timeout: float = 10.0,
        token: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        """`timeout`: each call's deadline in seconds, retries included; `token` None means
        `HA_VOICE_TOKEN` (none is needed from the nodes' trusted_networks)."""
        self._client = HAVoiceClient(
            url=jetson_url, cluster=cluster, deadline_s=timeout, token=token, ca_file=ca_file
        )

    def health_check(self) -> bool:
        return _succeeded(self._client.health)

    def send_command(self, text: str) -> dict[str, Any]:
        """The answer to a transcript, or {"status": "error", "message": ...}."""
        return _reported(lambda: self._client.say(text).body)

    def send_audio(
        self, audio: bytes, content_type: str = "application/octet-stream"
    ) -> dict[str, Any]:
        """The answer to a recording (WAV, FLAC, Ogg, MP3, WebM bytes), as to a transcript."""
        return _reported(lambda: self._client.listen(audio, content_type).body)

    def get_status(self) -> dict[str, Any]:
        return _reported(self._client.status)

    def send_robot_command(
        self, command: str, params: dict[str, float] | None = None
    ) -> dict[str, Any]:
        return _reported(lambda: self._client.command(command, params).body)

    def get_commands(self) -> dict[str, Any]:
        return _reported(self._client.commands)

    def start_listening(self) -> bool:
        return _succeeded(lambda: self._client.set_listening(True))

    def stop_listening(self) -> bool:
        return _succeeded(lambda: self._client.set_listening(False))

    def close(self) -> None:
        self._client.close()


def _reported(call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The call's answer, or the seed's error answer in its place."""
    try:
        return call()
    except ClientError as exc:
        return {"status": "error", "message": str(exc)}


def _succeeded(call: Callable[[], object]) -> bool:
    try:
        call()
    except ClientError:
        return False
    return True
