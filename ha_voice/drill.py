"""`ha-voice drill`: a measured, controlled failover of a live cluster, repeated.

Each repetition: check that the cluster is healthy enough (a primary with a valid lease whose
takeover is done, every member heard, none in FAULT, a backup that can lead); note the primary
and its term; trigger (an authenticated leadership transfer, or with `crash` a SIGKILL of the
local daemon, which must be the primary); then watch from this host what clients see
(`drill_watch.py`), each time in milliseconds from the trigger, until a newer primary shows in
every view or `timeout_s` passes. Between repetitions it waits `interval_s`, then for the
cluster to be healthy again (at most `timeout_s`).

A repetition's failover time is the latest of its views (robot commands accepted again, the
floating IP answering from the new primary, the mDNS endpoint naming it): when every kind of
client sees the new primary. A crash repetition after the first hands leadership back to this
host's node first (untimed), so that each one kills the local daemon.

Exit status (`EXIT_*`): 0 all within `max_ms`, 1 one was slower or did not complete, 2 usage or
configuration (cli_drill.py), 3 not drilled (the cluster is not healthy enough, refused the
hand-over or the token, or `crash` is not run on the primary's host), 130 interrupted. Every
wait is bounded; Ctrl-C stops the watchers and says where the cluster was left.
"""

from __future__ import annotations

import json
import statistics
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Final, TextIO

import httpx

from ha_voice import clock
from ha_voice.client import tls_floor
from ha_voice.drill_crash import CrashRefused, find_local_daemon
from ha_voice.drill_watch import (
    EndpointCache,
    MdnsWatch,
    ReadyWatch,
    Seen,
    Verify,
    VipWatch,
    Watch,
)
from ha_voice.errors import ConfigError, HAVoiceError, UnreachableError
from ha_voice.status import post_step_down

__all__ = [
    "EXIT_NOT_DRILLED",
    "EXIT_OK",
    "EXIT_SLOW",
    "DrillOptions",
    "NotDrillable",
    "Repetition",
    "health_problems",
    "run_drill",
]

EXIT_OK: Final = 0
EXIT_SLOW: Final = 1
EXIT_NOT_DRILLED: Final = 3
EXIT_INTERRUPTED: Final = 130
_READ_TIMEOUT_S: Final = 2.0  # a /cluster read: a node that answers at all answers in ms
_WITNESS_SILENT_S: Final = 2.0  # a witness unheard longer is missing (its role is static)
_MDNS_WARM_S: Final = 2.0  # for the listening cache to show the primary before a trigger
_HEALTH_POLL_S: Final = 0.2


class NotDrillable(HAVoiceError):
    """The cluster or this host is not in a state to drill; the message says why and what to
    do."""


@dataclass(frozen=True)
class DrillOptions:
    """What `ha-voice drill` was asked; durations in seconds, `max_ms` in milliseconds."""

    base_url: str  # any node's API; with `crash`, this host's node
    count: int = 1
    max_ms: float | None = None
    crash: bool = False
    interval_s: float = 2.0
    timeout_s: float = 30.0
    to: str | None = None
    token: str | None = None
    verify: Verify = True
    cluster: str = "ha-voice"
    mdns: bool = True
    vip_url: str | None = None  # the floating IP's API URL, if one is configured
    as_json: bool = False


@dataclass(frozen=True)
class _Cluster:
    """The cluster as its primary tells it, at one instant."""

    primary: str
    term: int
    primary_url: str
    urls: dict[str, str]  # node -> API URL, every member that can lead (the primary's included)
    view: dict[str, Any]


@dataclass
class Repetition:
    """One failover as this host saw it; times in ms after the trigger, None if not seen
    (or not measured: `vip` without a floating IP, `mdns` where this host hears no endpoint)."""

    repetition: int
    trigger: str  # "transfer" or "crash"
    cause: str
    old: str
    old_term: int
    new: str | None = None
    term: int | None = None
    ready: Seen = field(default_factory=Seen)
    vip: Seen | None = None
    mdns: Seen | None = None
    mdns_query: Seen | None = None
    mdns_note: str | None = None
    cluster_ms: float | None = None  # the new primary's own measure (`/cluster` last_failover)
    failover_ms: float | None = None
    exceeded: bool = False

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def run_drill(options: DrillOptions, out: TextIO, err: TextIO) -> int:
    """Run `options.count` repetitions, printing each and a summary to `out`; the exit status
    (module docstring). NotDrillable, UnreachableError and ConfigError propagate before the
    first trigger; after one, they end the drill with a report of what was done."""
    cache = _endpoint_cache(options, err)
    done: list[Repetition] = []
    phase = "while checking the cluster"
    try:
        for number in range(1, options.count + 1):
            if number > 1:
                phase = f"while waiting {options.interval_s:g} s before repetition {number}"
                threading.Event().wait(options.interval_s)
                phase = f"while waiting for the cluster to be healthy before repetition {number}"
            cluster = _healthy(options, patient=number > 1)
            phase = f"during repetition {number}"
            repetition = _repeat(options, number, cluster, cache)
            done.append(repetition)
            _print(options, out, repetition)
            phase = f"after repetition {number}"
            if repetition.new is None:
                break  # no primary came: the next one could not start
    except KeyboardInterrupt:
        print(f"ha-voice drill: interrupted {phase}; {_where(options)}", file=err)
        _summary(options, out, done)
        return EXIT_INTERRUPTED
    except (NotDrillable, UnreachableError) as exc:
        if not done:
            raise
        print(f"ha-voice drill: stopped after {len(done)}: {exc}", file=err)
        _summary(options, out, done)
        return EXIT_NOT_DRILLED
    finally:
        if cache is not None:
            cache.close()
    _summary(options, out, done)
    return EXIT_SLOW if any(r.exceeded for r in done) else EXIT_OK


def _endpoint_cache(options: DrillOptions, err: TextIO) -> EndpointCache | None:
    """The listening mDNS cache for the drill; None without mdns, or if zeroconf cannot start
    here (said once on `err`: the other views are still watched)."""
    if not options.mdns:
        return None
    try:
        return EndpointCache(options.cluster)
    except OSError as exc:
        print(f"ha-voice drill: the mDNS endpoint is not watched: {exc}", file=err)
        return None


# --- is the cluster fit to drill --------------------------------------------------------------


def health_problems(view: dict[str, Any], primary_ready: str | None) -> list[str]:
    """Why the cluster, as its primary's `/cluster` `view` shows it, is not fit to drill ([] if
    it is); `primary_ready` is why the primary's `/cluster/primary` is not 200 (None if it is)."""
    if view.get("role") != "primary":
        leader = view.get("leader") or "none"
        return [f"no primary with a valid lease ({view.get('node')} says: leader {leader})"]
    problems = [] if primary_ready is None else [f"the primary is not serving: {primary_ready}"]
    members = [m for m in view.get("members", []) if isinstance(m, dict) and not m.get("self")]
    for member in members:
        name, role = member.get("node"), member.get("role")
        if role == "fault":
            problems.append(f"{name} is in FAULT (see its /health fault_reason)")
        elif role == "witness":
            heard = member.get("last_heard_s")
            if heard is None or heard > _WITNESS_SILENT_S:
                problems.append(f"witness {name} is not heard ({_ago(heard)})")
        elif role != "backup":
            problems.append(f"{name} is {role}: not heard ({_ago(member.get('last_heard_s'))})")
    if not any(m.get("role") == "backup" for m in members):
        problems.append(
            f"no backup can take over from {view.get('node')}: a drill needs a second member "
            "that can lead"
        )
    return problems


def _ago(seconds: object) -> str:
    return "never heard" if seconds is None else f"last heard {seconds} s ago"


def _healthy(options: DrillOptions, *, patient: bool) -> _Cluster:
    """The cluster once it is fit to drill: at once, or (`patient`) within `timeout_s`;
    NotDrillable with every problem otherwise."""
    deadline = clock.monotonic() + (options.timeout_s if patient else 0.0)
    while True:
        try:
            cluster = _snapshot(options)
            problems = health_problems(cluster.view, _not_serving(cluster.primary_url, options))
        except UnreachableError as exc:
            cluster, problems = None, [str(exc)]
        if cluster is not None and not problems:
            _check_target(options, cluster)
            return cluster
        if clock.monotonic() >= deadline:
            waited = f" after waiting {options.timeout_s:g} s" if patient else ""
            raise NotDrillable(
                f"the cluster is not healthy enough to drill{waited}: " + "; ".join(problems)
            )
        threading.Event().wait(_HEALTH_POLL_S)


def _check_target(options: DrillOptions, cluster: _Cluster) -> None:
    members = {
        str(m.get("node")): m for m in cluster.view.get("members", []) if isinstance(m, dict)
    }
    if options.to is None:
        return
    member = members.get(options.to)
    if member is None:
        raise ConfigError(f"--to {options.to}: not a member (members: {', '.join(members)})")
    if member.get("witness"):
        raise ConfigError(f"--to {options.to}: a witness never leads; name a node")


def _snapshot(options: DrillOptions) -> _Cluster:
    """The primary's view, found from `base_url` (a backup names its leader's API)."""
    url = options.base_url
    view = _get(f"{url}/cluster", options.verify)
    if view.get("role") != "primary" and view.get("leader_api"):
        leader_url = tls_floor(str(view["leader_api"]), _tls(options))
        try:
            leader_view = _get(f"{leader_url}/cluster", options.verify)
        except UnreachableError:
            leader_view = {}
        if leader_view.get("node") == view.get("leader"):
            url, view = leader_url, leader_view
    urls = {
        str(m["node"]): tls_floor(str(m["api"]), _tls(options))
        for m in view.get("members", [])
        if isinstance(m, dict) and m.get("api") and not m.get("witness")
    }
    urls[str(view.get("node"))] = url
    return _Cluster(str(view.get("node")), int(view.get("term") or 0), url, urls, view)


def _not_serving(primary_url: str, options: DrillOptions) -> str | None:
    """Why `primary_url` answers `/cluster/primary` with other than 200; None if 200."""
    try:
        response = httpx.get(
            f"{primary_url}/cluster/primary", timeout=_READ_TIMEOUT_S, verify=options.verify
        )
    except httpx.HTTPError as exc:
        return f"{primary_url}: {exc}"
    if response.status_code == 200:
        return None
    try:
        reason = response.json().get("reason")
    except (ValueError, AttributeError):
        reason = None
    return str(reason or f"HTTP {response.status_code}")


def _get(url: str, verify: Verify) -> dict[str, Any]:
    try:
        response = httpx.get(url, timeout=_READ_TIMEOUT_S, verify=verify)
        body = response.json()
    except httpx.HTTPError as exc:
        raise UnreachableError(f"{url}: {exc}; is ha-voice running there?") from None
    except ValueError:
        raise UnreachableError(f"{url}: not ha-voice (no JSON answer)") from None
    if not isinstance(body, dict):
        raise UnreachableError(f"{url}: not ha-voice (no JSON object)")
    return body


def _tls(options: DrillOptions) -> bool:
    return options.base_url.startswith("https://") or not isinstance(options.verify, bool)


# --- one repetition -------------------------------------------------------------------------


def _repeat(
    options: DrillOptions, number: int, cluster: _Cluster, cache: EndpointCache | None
) -> Repetition:
    """Trigger one failover of `cluster` and watch it (module docstring)."""
    if options.crash and number > 1:
        cluster = _hand_back(options, cluster)
    mdns_note = None
    if cache is not None and not cache.wait_for(cluster.primary, _MDNS_WARM_S):
        mdns_note = (
            f"not measured: no endpoint record of {cluster.primary} heard from this host "
            "(mDNS off on the nodes, or multicast does not reach here)"
        )
    trigger, cause, pull = _trigger(options, cluster)
    stop = threading.Event()
    # The deadline counts from before the trigger: at most timeout_s after it, whatever it took.
    deadline = clock.monotonic() + options.timeout_s
    old = (cluster.primary, cluster.term)
    others = [url for node, url in sorted(cluster.urls.items()) if node != cluster.primary]
    ready = ReadyWatch(deadline, stop, old, [cluster.primary_url, *others], options.verify)
    watches: list[Watch] = [ready]
    vip = None
    if options.vip_url is not None:
        vip = VipWatch(deadline, stop, old, options.vip_url, options.verify)
        watches.append(vip)
    mdns = None
    if cache is not None and mdns_note is None:
        mdns = MdnsWatch(deadline, stop, old, cache)
        watches.append(mdns)
    t0 = _watch(watches, stop, pull)
    seen = ready.result(t0)
    repetition = Repetition(
        repetition=number,
        trigger=trigger,
        cause=cause,
        old=cluster.primary,
        old_term=cluster.term,
        new=seen.node,
        term=seen.term,
        ready=seen,
        vip=None if vip is None else vip.result(t0),
        mdns=None if mdns is None else mdns.result(t0),
        mdns_query=None if mdns is None else mdns.query_result(t0),
        mdns_note=mdns_note,
    )
    _judge(options, repetition)
    if repetition.new is not None:
        repetition.cluster_ms = _cluster_ms(options, cluster.urls.get(repetition.new))
    return repetition


def _trigger(options: DrillOptions, cluster: _Cluster) -> tuple[str, str, Callable[[], float]]:
    """(kind, cause, pull): everything checked first; `pull()` triggers and returns the
    trigger's instant (monotonic s). NotDrillable if this drill may not trigger."""
    if options.crash:
        return _crash(options, cluster)
    target = options.to if options.to != cluster.primary else None

    def transfer() -> float:
        t0 = clock.monotonic()
        response = post_step_down(cluster.primary_url, target, options.token, options.verify)
        if response.status_code != 202:
            raise NotDrillable(_refusal(cluster.primary, response))
        return t0

    to = f"to {target}" if target else "to the best backup"
    return "transfer", f"leadership transfer {to} (POST /cluster/step-down)", transfer


def _refusal(primary: str, response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = {}
    said = body.get("reason") or body.get("error") or body.get("detail") or response.text[:200]
    if response.status_code == 401:
        return (
            f"{primary} refused the hand-over: not authenticated ({said}); give a token: "
            "--token-file FILE or $HA_VOICE_TOKEN"
        )
    return f"{primary} refused the hand-over (HTTP {response.status_code}): {said}"


def _hand_back(options: DrillOptions, cluster: _Cluster) -> _Cluster:
    """Before a second crash: leadership handed back to this host's node (restarted by systemd
    after the last one, now a backup), untimed; the cluster once it serves there. NotDrillable
    if the hand-over is refused or does not serve within `timeout_s`."""
    local = _get(f"{options.base_url}/cluster", options.verify).get("node")
    if local == cluster.primary or not isinstance(local, str):
        return cluster
    response = post_step_down(cluster.primary_url, local, options.token, options.verify)
    if response.status_code != 202:
        raise NotDrillable(
            f"handing leadership back to {local}: {_refusal(cluster.primary, response)}"
        )
    deadline = clock.monotonic() + options.timeout_s
    while clock.monotonic() < deadline:
        if _not_serving(options.base_url, options) is None:
            return _healthy(options, patient=True)
        threading.Event().wait(_HEALTH_POLL_S)
    raise NotDrillable(
        f"{local} did not serve as primary within {options.timeout_s:g} s of the hand-back"
    )


def _crash(options: DrillOptions, cluster: _Cluster) -> tuple[str, str, Callable[[], float]]:
    local = _get(f"{options.base_url}/cluster", options.verify)
    if local.get("node") != cluster.primary:
        raise NotDrillable(
            f"--crash kills this host's daemon, and it is {local.get('node')} "
            f"({local.get('role')}), not the primary {cluster.primary}: run the drill on "
            f"{cluster.primary}'s host, or leave out --crash for a transfer"
        )
    url = httpx.URL(options.base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        daemon = find_local_daemon(url.host, port)
    except CrashRefused as exc:
        raise NotDrillable(f"--crash: {exc}") from None

    def kill() -> float:
        t0 = clock.monotonic()
        try:
            daemon.kill()
        except ProcessLookupError:
            raise NotDrillable(f"pid {daemon.pid} was gone before the SIGKILL") from None
        return t0

    cause = f"SIGKILL of {cluster.primary}'s daemon, pid {daemon.pid} (found by {daemon.how})"
    return "crash", cause, kill


def _watch(watches: list[Watch], stop: threading.Event, pull: Callable[[], float]) -> float:
    """Start `watches`, `pull` the trigger, and run them until each is done; the trigger's
    instant. On an error or Ctrl-C, stop them first, then re-raise."""
    for watch in watches:
        watch.start()
    try:
        t0 = pull()
        for watch in watches:
            while watch.is_alive():
                watch.join(0.05)
    finally:
        stop.set()
        for watch in watches:
            watch.join(1.0)
    return t0


def _judge(options: DrillOptions, repetition: Repetition) -> None:
    """The failover time (the latest view) and whether it exceeded `max_ms`; a view that never
    saw the new primary leaves it None, which counts as exceeded."""
    views = [repetition.ready, repetition.vip, repetition.mdns, repetition.mdns_query]
    times = [view.ms for view in views if view is not None]
    complete = all(ms is not None for ms in times)
    repetition.failover_ms = max(ms for ms in times if ms is not None) if complete else None
    limit = options.max_ms
    too_slow = limit is not None and (repetition.failover_ms or 0.0) > limit
    repetition.exceeded = repetition.failover_ms is None or too_slow


def _cluster_ms(options: DrillOptions, url: str | None) -> float | None:
    """The new primary's own measure of the failover (`/cluster` last_failover), in ms."""
    if url is None:
        return None
    try:
        failover = _get(f"{url}/cluster", options.verify).get("last_failover") or {}
    except UnreachableError:
        return None
    duration_s = failover.get("duration_s")
    return None if duration_s is None else round(float(duration_s) * 1000, 1)


def _where(options: DrillOptions) -> str:
    """Where the cluster is now, in a sentence (for an interrupted drill)."""
    try:
        cluster = _snapshot(options)
    except (UnreachableError, ValueError, TypeError) as exc:
        return f"the cluster could not be read: {exc}"
    view = cluster.view
    if view.get("role") != "primary":
        return f"no primary now ({cluster.primary} is {view.get('role')} in term {cluster.term})"
    roles = ", ".join(f"{m.get('node')} {m.get('role')}" for m in view.get("members", []))
    return f"the cluster is left with primary {cluster.primary} in term {cluster.term} ({roles})"


# --- the report ------------------------------------------------------------------------------


def _print(options: DrillOptions, out: TextIO, r: Repetition) -> None:
    if options.as_json:
        print(json.dumps(r.as_json()), file=out, flush=True)
        return
    new = r.new or "no primary"
    lines = [
        f"drill {r.repetition}/{options.count}: {r.trigger} {r.old} -> {new}, term "
        f"{r.old_term} -> {r.term if r.term is not None else '?'}",
        f"  cause: {r.cause}",
        f"  robot commands accepted again after {_ms(r.ready)} ({_reads(r.ready, 'client reads')})",
    ]
    if r.vip is not None:
        lines.append(f"  floating IP answers from {new} after {_ms(r.vip)} ({_reads(r.vip)})")
        if r.trigger == "crash":
            lines.append(
                f"    (seen from {r.old}'s host: a SIGKILLed daemon leaves the floating IP "
                "configured here until its daemon restarts, as keepalived does)"
            )
    if r.mdns is not None and r.mdns_query is not None:
        gone = "" if r.mdns.gone_ms is None else f", old record gone at {r.mdns.gone_ms} ms"
        lines.append(
            f"  mDNS endpoint names {new}: in a listening client's cache after {_ms(r.mdns)}"
            f"{gone}; in a fresh query's answer after {_ms(r.mdns_query)}"
        )
    elif r.mdns_note:
        lines.append(f"  mDNS endpoint: {r.mdns_note}")
    if r.cluster_ms is not None:
        lines.append(f"  the new primary measured its own takeover at {r.cluster_ms} ms")
    verdict = "EXCEEDED" if r.exceeded else "ok"
    limit = "" if options.max_ms is None else f" (--max-ms {options.max_ms:g})"
    took = "not complete" if r.failover_ms is None else f"{r.failover_ms} ms"
    lines.append(f"  failover {took}: {verdict}{limit}")
    print("\n".join(lines), file=out, flush=True)


def _ms(seen: Seen) -> str:
    return "never (timed out)" if seen.ms is None else f"{seen.ms} ms"


def _reads(seen: Seen, what: str = "reads") -> str:
    return f"{what}: {seen.failed} of {seen.reads} failed"


def _summary(options: DrillOptions, out: TextIO, done: list[Repetition]) -> None:
    times = [r.failover_ms for r in done if r.failover_ms is not None]
    summary: dict[str, Any] = {
        "repetitions": len(done),
        "exceeded": sum(r.exceeded for r in done),
        "max_ms": options.max_ms,
        "failover_ms": _spread(times),
        "ready_ms": _spread([r.ready.ms for r in done if r.ready.ms is not None]),
        "failed_reads": sum(r.ready.failed for r in done),
    }
    if options.as_json:
        print(json.dumps({"summary": summary}), file=out, flush=True)
        return
    spread = summary["failover_ms"]
    text = (
        "no failover completed"
        if spread is None
        else f"{spread['min']} / {spread['median']} / {spread['max']} ms (min / median / max)"
    )
    limit = "" if options.max_ms is None else f", {summary['exceeded']} over {options.max_ms:g} ms"
    print(f"{len(done)} failover(s): {text}{limit}", file=out, flush=True)


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "min": min(values),
        "median": round(statistics.median(values), 1),
        "max": max(values),
    }
