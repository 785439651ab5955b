"""Service-level objectives: latency thresholds at named percentiles, and the per-request check.

Grammar of an SLO string (`parse_slo`), comma-separated, order kept:

    METRIC_pNN=VALUE[UNIT]      METRIC in ttft, tpot, e2e; NN in 50, 90, 95, 99;
                                UNIT in s, ms, us (or µs); a bare number is seconds
    attainment=FRACTION         optional, in (0, 1]

for example ``ttft_p90=2s,tpot_p90=80ms,e2e_p99=30s``. Each metric may appear once. Without
``attainment=`` the attainment target is the percentile shared by all targets (p99 -> 0.99), or 0.9
when they differ.

Two ways to judge a run (DESIGN §3):

- per request (DistServe): a completed request is good when its TTFT, TPOT and E2E are each within
  their thresholds (those given). A request with one output token has no TPOT and passes that check.
  Failed requests are never good. Goodput and SLO attainment count good requests, and the attainment
  target is the fraction of requests that must be good.
- per run (`Slo.met_by`): each named percentile of the run's summary is within its threshold.

ITL (the gap between two streamed tokens) is reported in every summary but is refused as an
objective: a simulated run has no per-request token gaps (the simulator reports each decode step
once for all its sequences), so a per-request ITL check could not be applied to the runs it matters
for. TPOT, the mean gap of each request, is the per-request objective.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from paretoserve.errors import UserError
from paretoserve.metrics.records import RequestRecord

if TYPE_CHECKING:
    from paretoserve.metrics.summary import Summary

METRICS: tuple[str, ...] = ("ttft", "tpot", "e2e")
PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)
DEFAULT_ATTAINMENT = 0.9

_UNIT_EXPONENT = {"s": 0, "ms": -3, "us": -6, "µs": -6}
_TARGET = re.compile(r"^(ttft|tpot|e2e)_p(\d+)$")
_VALUE = re.compile(r"^([0-9.eE+-]+?)\s*(s|ms|us|µs)?$")
_GRAMMAR = ("expected comma-separated METRIC_pNN=VALUE[s|ms|us] with METRIC in ttft, tpot, e2e and "
            "NN in 50, 90, 95, 99, plus optional attainment=FRACTION, e.g. 'ttft_p90=2s,tpot_p90=80ms'")


@dataclass(frozen=True, slots=True)
class SloTarget:
    """One latency objective: `percentile` of `metric` must be at most `threshold_s` seconds."""

    metric: str
    percentile: int
    threshold_s: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"SLO metric {self.metric!r}: expected one of {', '.join(METRICS)}")

    def __str__(self) -> str:
        return f"{self.metric}_p{self.percentile}={_format_seconds(self.threshold_s)}"


@dataclass(frozen=True, slots=True)
class Slo:
    """A set of latency objectives and the fraction of requests that should meet them.

    Attributes:
        targets: the objectives, at most one per metric, in the order given.
        attainment_target: fraction of requests that should be good (see module docstring).
    """

    targets: tuple[SloTarget, ...]
    attainment_target: float = DEFAULT_ATTAINMENT

    def threshold_s(self, metric: str) -> float | None:
        """The threshold in seconds for `metric` ("ttft", "tpot", "e2e"), None if not set."""
        return next((t.threshold_s for t in self.targets if t.metric == metric), None)

    @property
    def ttft_s(self) -> float | None:
        """TTFT threshold in seconds, None if not set."""
        return self.threshold_s("ttft")

    @property
    def tpot_s(self) -> float | None:
        """TPOT threshold in seconds, None if not set."""
        return self.threshold_s("tpot")

    @property
    def e2e_s(self) -> float | None:
        """E2E threshold in seconds, None if not set."""
        return self.threshold_s("e2e")

    def request_ok(self, record: RequestRecord) -> bool:
        """True when the request completed and its TTFT, TPOT and E2E meet the thresholds given."""
        if not record.ok:
            return False
        for target in self.targets:
            value = getattr(record, f"{target.metric}_s")
            if value is not None and value > target.threshold_s:
                return False
        return True

    def met_by(self, summary: Summary) -> bool:
        """True when every named percentile of `summary` is at most its threshold.

        A metric with no samples (e.g. no request completed) does not meet its objective.
        """
        for target in self.targets:
            value = getattr(getattr(summary, target.metric), f"p{target.percentile}")
            if value is None or value > target.threshold_s:
                return False
        return True

    def __str__(self) -> str:
        parts = [str(target) for target in self.targets]
        if self.attainment_target != _default_attainment(self.targets):
            parts.append(f"attainment={self.attainment_target!r}")
        return ",".join(parts)


def _default_attainment(targets: tuple[SloTarget, ...]) -> float:
    """The shared percentile as a fraction, or `DEFAULT_ATTAINMENT` when percentiles differ."""
    percentiles = {target.percentile for target in targets}
    return percentiles.pop() / 100 if len(percentiles) == 1 else DEFAULT_ATTAINMENT


def _format_seconds(value_s: float) -> str:
    """Shortest exact text for `value_s` in s, ms or us (parsing it gives back the same float)."""
    exact = Decimal(repr(value_s))
    unit = "s" if value_s >= 1 else "ms" if value_s >= 1e-3 else "us"
    scaled = exact.scaleb(-_UNIT_EXPONENT[unit]).normalize()
    return f"{scaled:f}{unit}"


def _parse_seconds(text: str, where: str) -> float:
    """`text` (number with optional unit) as seconds, > 0."""
    match = _VALUE.match(text.strip())
    try:
        number = Decimal(match.group(1)) if match else None
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite() or number <= 0:
        raise UserError(f"SLO {where}: expected a positive duration like 2s, 80ms or 500us, got {text!r}")
    return float(number.scaleb(_UNIT_EXPONENT[match.group(2) or "s"]))  # type: ignore[union-attr]


def _parse_attainment(text: str) -> float:
    """The attainment fraction, in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise UserError(f"SLO attainment: expected a fraction in (0, 1], got {text!r}")
    return value


def parse_slo(text: str) -> Slo:
    """Parse an SLO string such as ``ttft_p90=2s,tpot_p90=80ms,e2e_p99=30s`` (see module docstring)."""
    targets: list[SloTarget] = []
    attainment: float | None = None
    for part in (p.strip() for p in text.split(",")):
        key, sep, value = (s.strip() for s in part.partition("="))
        key = key.lower()
        if not sep:
            raise UserError(f"SLO {text!r}: {part!r} has no '='; {_GRAMMAR}")
        if key == "attainment":
            attainment = _parse_attainment(value)
            continue
        if key.startswith("itl_"):
            raise UserError(f"SLO {text!r}: ITL is not an objective (simulated runs have no per-request "
                            f"token gaps); use tpot_pNN, the mean gap of each request; {_GRAMMAR}")
        match = _TARGET.match(key)
        if not match or int(match.group(2)) not in PERCENTILES:
            raise UserError(f"SLO {text!r}: unknown objective {key!r}; {_GRAMMAR}")
        if any(target.metric == match.group(1) for target in targets):
            raise UserError(f"SLO {text!r}: {match.group(1)} is given twice; give one percentile per metric")
        targets.append(SloTarget(match.group(1), int(match.group(2)), _parse_seconds(value, key)))
    if not targets:
        raise UserError(f"SLO {text!r}: no latency objective; {_GRAMMAR}")
    frozen = tuple(targets)
    return Slo(frozen, _default_attainment(frozen) if attainment is None else attainment)
