"""`ha-voice status` and `ha-voice step-down`: read `/cluster` from any node, follow the leader.

A backup knows only who leads; the primary knows everyone. So the view is taken from the
leader when the node asked can name it, and from the node asked otherwise. Reads need no token;
step-down sends one (`Authorization: Bearer`). `verify` is what HTTPS is verified with; with a
CA (an SSLContext) or an https base URL, the leader a node names is asked in https too, as the
client library does (`client.tls_floor`): the token never goes in clear where a node pointed.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from ha_voice.client import tls_floor
from ha_voice.errors import UnreachableError

__all__ = [
    "UnreachableError",
    "fetch_cluster",
    "post_step_down",
    "render_table",
    "step_down",
]

_TIMEOUT_S = 2.0


Verify = ssl.SSLContext | bool


def _get(url: str, verify: Verify) -> dict[str, Any]:
    try:
        response = httpx.get(url, timeout=_TIMEOUT_S, verify=verify)
    except httpx.HTTPError as exc:
        raise UnreachableError(f"{url}: {exc}; is ha-voice running there?") from None
    body: dict[str, Any] = response.json()
    return body


def fetch_cluster(base_url: str, verify: Verify = True) -> dict[str, Any]:
    """The most complete `/cluster` view reachable from `base_url`."""
    view = _get(f"{base_url}/cluster", verify)
    leader, leader_api = view.get("leader"), view.get("leader_api")
    if not leader_api or view.get("role") == "primary":
        return view
    leader_api = tls_floor(leader_api, _tls(base_url, verify))
    try:
        leader_view = _get(f"{leader_api}/cluster", verify)
    except UnreachableError:
        leader_view = {}
    if leader_view.get("node") == leader:
        return leader_view
    view["note"] = f"the leader's API was not found at {leader_api}: this is {view['node']}'s view"
    return view


def _tls(base_url: str, verify: Verify) -> bool:
    """Whether the caller asked for TLS: an https base URL, or a CA to verify with."""
    return base_url.startswith("https://") or isinstance(verify, ssl.SSLContext)


def render_table(view: dict[str, Any]) -> str:
    leader = view.get("leader") or "none"
    head = f"cluster {view['cluster']}  term {view['term']}  primary {leader}"
    if view.get("role") == "primary":
        head += f"  (lease {view['lease_remaining_s']:.2f} s)"
    rows = [("NODE", "ROLE", "PRIORITY", "LAST HEARD", "ADDRESS", "VOTER")]
    for m in view["members"]:
        heard = "self" if m["self"] else _seconds(m["last_heard_s"])
        voter = "witness" if m["witness"] else ("yes" if m["voter"] else "no")
        rows.append(
            (m["node"], m["role"], str(m["priority"] or "-"), heard, m["address"] or "-", voter)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [head, *("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)]
    failover = view.get("last_failover")
    if failover:
        took = failover["duration_s"]
        lines.append(
            f"last failover: {failover['old'] or '-'} -> {failover['new']} in term "
            f"{failover['term']}"
            + (f", {took * 1000:.0f} ms" if took is not None else "")
            + (f", by {failover['cause']}" if failover.get("cause") else "")
            + f", at {failover['at']}"
        )
    if view.get("reason"):
        lines.append(f"{view['node']} is {view.get('status', 'degraded')}: {view['reason']}")
    if "note" in view:
        lines.append(view["note"])
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def step_down(
    base_url: str, target: str | None, token: str | None, verify: Verify = True
) -> tuple[bool, str]:
    """Ask the primary (found from `base_url`) to hand over, with `token`; (done, what
    happened)."""
    view = _get(f"{base_url}/cluster", verify)
    primary_url = base_url if view.get("role") == "primary" else view.get("leader_api")
    if not primary_url:
        return False, f"no primary known to {view['node']}: nothing to step down"
    primary_url = tls_floor(primary_url, _tls(base_url, verify))
    response = post_step_down(primary_url, target, token, verify)
    body = response.json()
    if response.status_code == 202:
        return True, f"{view.get('leader')} is handing over"
    if response.status_code == 401:
        return False, f"not allowed: {body.get('error') or body.get('detail')}"
    return False, f"refused: {body.get('reason', body)}"


def post_step_down(
    primary_url: str, target: str | None, token: str | None, verify: Verify = True
) -> httpx.Response:
    """POST `/cluster/step-down` to `primary_url` with `token` (to `target`, else the best
    backup); the answer as it is (202 handing over, 401, 409 refused); UnreachableError if
    none comes within _TIMEOUT_S."""
    try:
        return httpx.post(
            f"{primary_url}/cluster/step-down",
            json={"target": target} if target else None,
            headers={"Authorization": f"Bearer {token}"} if token else None,
            timeout=_TIMEOUT_S,
            verify=verify,
        )
    except httpx.HTTPError as exc:
        raise UnreachableError(f"{primary_url}: {exc}") from None


def render_outcome(body: dict[str, Any], attempts: int) -> str:
    """One line for `ha-voice send`: the outcome, what ran, where, and how."""
    outcome = body.get("outcome") or body.get("status")
    what = body.get("intent") or body.get("command") or "?"
    if body.get("status") == "rejected":
        return f"not understood: {body.get('recognized')!r} ({body.get('reason')})"
    if body.get("dry_run"):
        return f"dry run: {what} would run (robot would say: {body.get('response')}); nothing ran"
    line = (
        f"{outcome}: {what} — index {body.get('index')}, executed by {body.get('executed_by')} "
        f"in term {body.get('journal_term')}"
    )
    extras = []
    if body.get("duplicate"):
        extras.append("answered from the journal (key seen before)")
    if attempts > 1:
        extras.append(f"{attempts} attempts")
    if body.get("detail"):
        extras.append(str(body["detail"]))
    if body.get("response"):
        extras.append(f"robot says: {body['response']}")
    return line + (f" ({'; '.join(extras)})" if extras else "")


def render_heard(body: dict[str, Any]) -> str:
    """One line for `ha-voice listen`: what the speech recogniser heard, where, how sure."""
    audio = body.get("audio") or {}
    timings = body.get("timings") or {}
    where = f" on {body['stt_node']}" if body.get("stt_node") else ""
    return (
        f"heard {body.get('recognized')!r}{where} (confidence {body.get('confidence', 0):.2f}; "
        f"{audio.get('format', '?')} of {audio.get('duration_s', 0):g} s; "
        f"{timings.get('total_ms', 0):.0f} ms)"
    )


def render_entry(entry: dict[str, Any]) -> str:
    """One journal entry as a line of `ha-voice journal`."""
    finished = "" if entry.get("executed_by") is None else f" by {entry['executed_by']}"
    text = f" {entry['text']!r}" if entry.get("text") else ""
    mark = "" if entry.get("committed", True) else " (not committed)"
    return (
        f"{entry['index']:>6}  t{entry['term']:<4} {entry['status']:<9} {entry['action']:<14}"
        f"{finished}{text}  key={entry['key']}{mark}"
    )
