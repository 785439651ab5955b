"""A plan's row — the schema of plans.jsonl and front.csv — from its figures, however they were
evaluated (simulated units, or the analytic stage model of heterogeneous replicas)."""

from __future__ import annotations

import math

#: `evaluation` of a row whose figures come from simulated units.
SIMULATED = "simulated"


def figures_row(plan: dict[str, object], label: str, devices: int, usd_per_hour: float, capacity: float,
                served: float, latencies: tuple[float | None, float | None, float | None],
                joules_per_request: float, tokens: tuple[float, float], attainment: float | None, command: str,
                evaluation: str = SIMULATED) -> dict[str, object]:
    """A plan's row (the schema of plans.jsonl) from its figures: capacity and `served` requests/s,
    (TTFT, TPOT, E2E) p90 seconds, joules and (prompt, output) tokens per request; `attainment` None
    when not simulated (the row then counts as meeting the SLO when its capacity is above 0)."""
    ttft, tpot, e2e = latencies
    in_per_request, out_per_request = tokens
    tokens_per_s = served * out_per_request
    total_tokens_per_s = served * (in_per_request + out_per_request)
    feasible = capacity > 0
    good = served * (1.0 if attainment is None else attainment) if feasible else 0.0
    return {
        "plan": plan,
        "label": label,
        "devices": devices,
        "dp_attention": plan["dp_attention"],
        "ep": plan["ep"],
        "max_rate_rps": capacity,
        "goodput_rps": good,
        "usd_per_hour": usd_per_hour,
        "usd_per_million_tokens": _usd_per_million(usd_per_hour, tokens_per_s),
        "usd_per_million_total_tokens": _usd_per_million(usd_per_hour, total_tokens_per_s),
        "ttft_p90_s": ttft,
        "tpot_p90_s": tpot,
        "e2e_p90_s": e2e,
        "joules_per_token": joules_per_request / out_per_request if out_per_request else math.inf,
        "goodput_per_device": good / devices,
        "goodput_per_usd_hour": good / usd_per_hour if usd_per_hour else 0.0,
        "slo_attainment": attainment,
        "feasible": feasible,
        "pareto": False,
        "knee": False,
        "recommended": False,
        "command": command,
        "reason": "",
        "estimated": True,
        "evaluation": evaluation,
    }


def _usd_per_million(usd_per_hour: float, tokens_per_s: float) -> float:
    """Dollars per million tokens at `tokens_per_s` (infinite when nothing is served)."""
    return usd_per_hour / (tokens_per_s * 3600) * 1e6 if tokens_per_s else math.inf


