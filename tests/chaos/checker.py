"""The chaos suite's rules beyond tests/jepsen.py's: what nodes say over time, and what clients
are shown. A pure function of samples and faults (`check_chaos`), like `tests.jepsen.check`.

Rules:
- Terms are monotonic per node, across its restarts (`term` is durable).
- After each fault heals, one node is the serving primary within `bound_s`. A restart (SIGKILL
  or SIGTERM, then start) heals when the restarted node answers its API again.
- What clients see follows the primary: once a node has been the one serving primary for
  `bound_s` (and the fault has been healed that long), every mDNS sample names it and every ARP
  sample shows its MAC alone, until the next fault begins.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.chaos.observe import RoleSample, ViewSample, primary_timeline
from tests.jepsen import Fault, percentiles

__all__ = ["CHAOS_VIOLATIONS", "ChaosReport", "check_chaos"]

CHAOS_VIOLATIONS = ("term_regressions", "primary_not_back", "client_view")


@dataclass
class ChaosReport:
    """What `check_chaos` found: one list per broken rule, and the measurements."""

    term_regressions: list[str] = field(default_factory=list)
    primary_not_back: list[str] = field(default_factory=list)
    client_view: list[str] = field(default_factory=list)
    back_ms: dict[str, list[float]] = field(default_factory=dict)  # heal -> primary, per kind
    view_lag_ms: dict[str, list[float]] = field(default_factory=dict)  # per channel

    @property
    def violations(self) -> dict[str, list[str]]:
        return {name: getattr(self, name) for name in CHAOS_VIOLATIONS}

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def summary(self, shown: int = 10) -> str:
        lines = ["primary back after the heal, ms p50/p90/max:"]
        lines += [f"  {k}: {percentiles(v)} (n={len(v)})" for k, v in sorted(self.back_ms.items())]
        lines.append("client view lag behind a new primary, ms p50/p90/max:")
        lines += [
            f"  {k}: {percentiles(v)} (n={len(v)})" for k, v in sorted(self.view_lag_ms.items())
        ]
        lines.append(", ".join(f"{name} {len(found)}" for name, found in self.violations.items()))
        for name, found in self.violations.items():
            lines.extend(f"  {name}: {detail}" for detail in found[:shown])
        return "\n".join(lines)


def check_chaos(
    roles: Sequence[RoleSample],
    views: Sequence[ViewSample],
    faults: Sequence[Fault],
    *,
    bound_s: float,
    end_s: float,
    start_s: float = 0.0,
) -> ChaosReport:
    """Judge one run's samples; `end_s` is when the last window closes, `start_s` time zero of
    the descriptions."""
    report = ChaosReport()
    _check_terms(roles, report, start_s)
    timeline = primary_timeline(roles)
    ends = [f.at_s for f in faults[1:]] + [end_s]
    for fault, window_end in zip(faults, ends, strict=True):
        _check_back(fault, timeline, bound_s, report, start_s)
        _check_view(fault, window_end, timeline, views, faults, bound_s, report, start_s)
    return report


def _check_terms(roles: Sequence[RoleSample], report: ChaosReport, start_s: float) -> None:
    highest: dict[str, RoleSample] = {}
    for sample in sorted(roles, key=lambda s: s.t_s):
        if sample.term is None:
            continue
        before = highest.get(sample.node)
        if before is not None and before.term is not None and sample.term < before.term:
            report.term_regressions.append(
                f"{sample.node}: term {before.term} at +{before.t_s - start_s:.3f}s, "
                f"then {sample.term} at +{sample.t_s - start_s:.3f}s"
            )
        if before is None or (before.term or 0) <= sample.term:
            highest[sample.node] = sample


def _primary_at(timeline: Sequence[tuple[float, str]], t_s: float) -> tuple[str, float]:
    """The one serving primary at `t_s` ("" if none) and since when."""
    i = bisect.bisect_right([t for t, _ in timeline], t_s) - 1
    return ("", t_s) if i < 0 else (timeline[i][1], timeline[i][0])


def _describe(fault: Fault, start_s: float) -> str:
    detail = f" {fault.detail}" if fault.detail else ""
    return f"{fault.kind.value}{detail} of {fault.target} at +{fault.at_s - start_s:.3f}s"


def _check_back(
    fault: Fault,
    timeline: Sequence[tuple[float, str]],
    bound_s: float,
    report: ChaosReport,
    start_s: float,
) -> None:
    """A serving primary within `bound_s` of the heal; the wait is measured per fault kind."""
    primary, _ = _primary_at(timeline, fault.healed_s)
    back_s = fault.healed_s if primary else None
    if back_s is None:
        later = [t for t, node in timeline if t > fault.healed_s and node]
        back_s = later[0] if later else None
    if back_s is None or back_s - fault.healed_s > bound_s:
        waited = "never" if back_s is None else f"after {back_s - fault.healed_s:.3f}s"
        report.primary_not_back.append(
            f"{_describe(fault, start_s)}: healed at +{fault.healed_s - start_s:.3f}s, "
            f"a primary {waited} (bound {bound_s}s)"
        )
    if back_s is not None:
        report.back_ms.setdefault(fault.kind.value, []).append((back_s - fault.healed_s) * 1000)


def _check_view(
    fault: Fault,
    window_end: float,
    timeline: Sequence[tuple[float, str]],
    views: Sequence[ViewSample],
    faults: Sequence[Fault],
    bound_s: float,
    report: ChaosReport,
    start_s: float,
) -> None:
    """Each channel names the settled primary; the first miss per channel per fault is kept,
    with when that view began and the fault it followed (a wrong view can outlast its cause).
    A tenure that began during this fault's window gives each channel's lag behind it."""
    missed: set[str] = set()
    for sample in views:
        if not fault.healed_s <= sample.t_s < window_end:
            continue
        primary, since = _primary_at(timeline, sample.t_s)
        settled = sample.t_s - max(since, fault.healed_s) >= bound_s
        if not primary or not settled or sample.nodes == (primary,):
            continue
        if sample.channel not in missed:
            missed.add(sample.channel)
            shown = ",".join(sample.nodes) or f"nothing ({sample.note or 'none'})"
            report.client_view.append(
                f"{_describe(fault, start_s)}: at +{sample.t_s - start_s:.3f}s {sample.channel} "
                f"shows {shown}; the primary since +{since - start_s:.3f}s is {primary}"
                f" ({_origin(sample, views, faults, start_s)})"
            )
    primary, since = _primary_at(timeline, window_end)
    if primary and fault.at_s <= since < window_end:
        for channel in sorted({v.channel for v in views}):
            right = [
                v.t_s
                for v in views
                if v.channel == channel and since <= v.t_s < window_end and v.nodes == (primary,)
            ]
            if right:
                report.view_lag_ms.setdefault(channel, []).append((right[0] - since) * 1000)


def faults_by_kind(faults: Sequence[Fault]) -> dict[str, int]:
    """How many faults of each kind."""
    counts: dict[str, int] = defaultdict(int)
    for fault in faults:
        counts[fault.kind.value] += 1
    return dict(counts)


def _origin(
    miss: ViewSample, views: Sequence[ViewSample], faults: Sequence[Fault], start_s: float
) -> str:
    """Since when `miss`'s channel has shown what it shows, and after which fault."""
    began = miss.t_s
    for sample in reversed([v for v in views if v.channel == miss.channel and v.t_s < miss.t_s]):
        if (sample.nodes, sample.note) != (miss.nodes, miss.note):
            break
        began = sample.t_s
    before = [f for f in faults if f.at_s <= began]
    if not before:
        return f"since +{began - start_s:.3f}s"
    cause = before[-1]
    if began <= cause.healed_s:
        return f"since +{began - start_s:.3f}s, during {_describe(cause, start_s)}"
    return (
        f"since +{began - start_s:.3f}s, {began - cause.healed_s:.3f}s after "
        f"{_describe(cause, start_s)} healed"
    )
