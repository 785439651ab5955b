"""Synthetic workloads: seeded arrival processes and length distributions, and trace rescaling.

Arrival processes (rates in requests per second, times in seconds; the first request arrives at
0 s and each later one after a random gap):

- `poisson(rate)`: exponential gaps of mean 1/rate.
- `gamma(rate, cv)`: gamma gaps of mean 1/rate and coefficient of variation `cv` (the burstiness;
  cv = 1 is Poisson, cv > 1 burstier, cv < 1 more regular; from `MIN_CV` to `MAX_CV`).
- `constant(rate)`: gaps of exactly 1/rate.
- `ramp(start_rate, end_rate, duration_s)`: a Poisson process whose rate moves linearly from
  `start_rate` to `end_rate` over `duration_s` and stays at `end_rate` afterwards (no arrivals
  after `duration_s` when `end_rate` is 0).

Length specs (`parse_lengths`), for prompt or output tokens:

- ``N`` or ``fixed:N``                 always N tokens;
- ``uniform:A:B``                       integers uniformly in [A, B], both included;
- ``lognormal:MEAN:SIGMA``              log-normal with mean MEAN tokens and shape SIGMA (the standard
                                        deviation of the log, at most `MAX_SIGMA`), rounded and
                                        kept within [1, MAX_TOKENS].

Token counts in a spec are whole numbers from 1 to `MAX_TOKENS`.

Prompt and output lengths may instead be resampled from a named trace: pairs (prompt, output) are
drawn jointly with replacement, keeping their correlation; prefix hashes are not copied (resampled
duplicates would fake prefix sharing). Seeds: one `numpy.random.SeedSequence(seed)` split into an
arrival stream and a length stream, so changing the arrival process keeps the lengths the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from itertools import islice

import numpy as np

from paretoserve.errors import UserError
from paretoserve.workload.request import MAX_TOKENS, Request
from paretoserve.workload.traces import load_trace

#: Requests generated per batch by the streaming generators (memory stays O(CHUNK)).
CHUNK = 4096

#: Range of the arrival rate of a synthetic process, requests/s (from one request in 30 years to far
#: above any deployment; keeps the ramp's arithmetic, which squares rates, clear of overflow and
#: underflow).
MIN_RATE, MAX_RATE = 1e-9, 1e6

#: Range of a gamma process's coefficient of variation (1e-3 is all but constant gaps; 1e3 sends
#: nearly everything in a handful of bursts).
MIN_CV, MAX_CV = 1e-3, 1e3

#: Largest lognormal SIGMA of a length spec (SIGMA 10 spreads lengths over tens of decades already).
MAX_SIGMA = 10


# ---------------------------------------------------------------------------------------------
# Arrival processes


@dataclass(frozen=True)
class Arrivals:
    """An arrival process: `next_times` continues it from the last arrival time.

    Attributes:
        kind: "poisson", "gamma", "constant" or "ramp".
        rate: mean rate in requests/s (the start rate for "ramp").
        cv: coefficient of variation of the gaps ("gamma" only).
        end_rate: rate at the end of the ramp in requests/s ("ramp" only).
        duration_s: length of the ramp in seconds ("ramp" only).
    """

    kind: str
    rate: float
    cv: float = 1.0
    end_rate: float = 0.0
    duration_s: float = 0.0

    def next_times(self, rng: np.random.Generator, last_s: float, count: int) -> np.ndarray:
        """The next `count` arrival times (seconds) after an arrival at `last_s`.

        Times may be `inf` when a ramp down to 0 has ended: no arrivals follow.
        """
        if self.kind == "ramp":
            return self._ramp_times(rng, last_s, count)
        if self.kind == "poisson":
            gaps = rng.exponential(1.0 / self.rate, count)
        elif self.kind == "gamma":
            shape = 1.0 / (self.cv * self.cv)
            gaps = rng.gamma(shape, 1.0 / (self.rate * shape), count)
        else:
            gaps = np.full(count, 1.0 / self.rate)
        return last_s + np.cumsum(gaps)

    def _ramp_times(self, rng: np.random.Generator, last_s: float, count: int) -> np.ndarray:
        """Non-homogeneous Poisson by inversion of the cumulative rate Λ(t)."""
        targets = self._cumulative(last_s) + np.cumsum(rng.exponential(1.0, count))
        return self._inverse(targets)

    def _cumulative(self, time_s: float) -> float:
        """Λ(t): expected arrivals in [0, t]."""
        span = min(time_s, self.duration_s)
        slope = (self.end_rate - self.rate) / self.duration_s
        within = self.rate * span + 0.5 * slope * span * span
        return within + self.end_rate * max(0.0, time_s - self.duration_s)

    def _inverse(self, targets: np.ndarray) -> np.ndarray:
        """t such that Λ(t) = target, for each target (inf beyond a ramp that ends at rate 0)."""
        slope = (self.end_rate - self.rate) / self.duration_s
        at_end = self._cumulative(self.duration_s)
        inside = np.minimum(targets, at_end)
        # Root of slope/2 t² + rate t = L written to stay exact when slope is 0 or negative.
        denominator = self.rate + np.sqrt(np.maximum(self.rate ** 2 + 2.0 * slope * inside, 0.0))
        root = np.divide(2.0 * inside, denominator, out=np.zeros_like(inside), where=denominator > 0)
        after = self.duration_s + (targets - at_end) / self.end_rate if self.end_rate > 0 else np.inf
        return np.where(targets <= at_end, root, after)

    def iter_times(self, rng: np.random.Generator) -> Iterator[float]:
        """Arrival times from 0 s on, generated `CHUNK` at a time (ends only for a finished ramp)."""
        last = 0.0
        yield last
        while True:
            for time_s in self.next_times(rng, last, CHUNK).tolist():
                if time_s == math.inf:
                    return
                yield time_s
                last = time_s


def _positive(value: float, what: str) -> float:
    """`value` as a float when it is positive and finite, else a UserError naming `what`."""
    if not (value > 0 and math.isfinite(value)):
        raise UserError(f"{what} must be a positive number, got {value!r}")
    return float(value)


def _rate(value: float) -> float:
    """`value` as an arrival rate: positive, finite and at most `MAX_RATE` requests/s."""
    if not MIN_RATE <= value <= MAX_RATE:  # also False for NaN
        raise UserError(f"rate must be from {MIN_RATE:g} to {MAX_RATE:g} requests/s, got {value!r}")
    return float(value)


def poisson(rate: float) -> Arrivals:
    """Poisson arrivals at `rate` requests/s."""
    return Arrivals("poisson", _rate(rate))


def gamma(rate: float, cv: float) -> Arrivals:
    """Gamma-renewal arrivals at mean `rate` requests/s with gap coefficient of variation `cv`."""
    if not MIN_CV <= cv <= MAX_CV:
        raise UserError(f"burstiness (CV) must be from {MIN_CV:g} to {MAX_CV:g}, got {cv!r}")
    return Arrivals("gamma", _rate(rate), cv=float(cv))


def constant(rate: float) -> Arrivals:
    """Evenly spaced arrivals, `rate` requests/s."""
    return Arrivals("constant", _rate(rate))


def ramp(start_rate: float, end_rate: float, duration_s: float) -> Arrivals:
    """Poisson arrivals whose rate goes linearly from `start_rate` to `end_rate` over `duration_s`."""
    def valid(rate: float) -> bool:
        return rate == 0 or MIN_RATE <= rate <= MAX_RATE

    if not (valid(start_rate) and valid(end_rate)) or start_rate + end_rate <= 0:
        raise UserError(f"ramp rates must be 0 or from {MIN_RATE:g} to {MAX_RATE:g} requests/s, not both 0; "
                        f"got {start_rate!r} and {end_rate!r}")
    return Arrivals("ramp", float(start_rate), end_rate=float(end_rate),
                    duration_s=_positive(duration_s, "ramp duration"))


# ---------------------------------------------------------------------------------------------
# Lengths


@dataclass(frozen=True)
class Lengths:
    """A distribution of token counts, parsed from a spec (see the module docstring)."""

    kind: str
    a: float
    b: float = 0.0

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """`count` token counts (int64, each >= 1)."""
        if self.kind == "fixed":
            return np.full(count, int(self.a), dtype=np.int64)
        if self.kind == "uniform":
            return rng.integers(int(self.a), int(self.b), count, endpoint=True)
        mu = math.log(self.a) - 0.5 * self.b * self.b
        return np.clip(np.rint(rng.lognormal(mu, self.b, count)), 1, MAX_TOKENS).astype(np.int64)


_LENGTH_GRAMMAR = (f"expected N, fixed:N, uniform:A:B or lognormal:MEAN:SIGMA (token counts from 1 to "
                   f"{MAX_TOKENS:,}, SIGMA from 0 to {MAX_SIGMA})")


def _number(text: str, spec: str, what: str) -> Decimal:
    """A finite number from a length spec."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise UserError(f"length spec {spec!r}: {what} {text!r} is not a number; {_LENGTH_GRAMMAR}") from None
    if not value.is_finite():
        raise UserError(f"length spec {spec!r}: {what} must be finite; {_LENGTH_GRAMMAR}")
    return value


def _tokens(text: str, spec: str) -> int:
    """A whole token count from 1 to MAX_TOKENS from a length spec."""
    value = _number(text, spec, "token count")
    if not 1 <= value <= MAX_TOKENS or value != value.to_integral_value():
        raise UserError(f"length spec {spec!r}: {text!r} is not a whole number from 1 to {MAX_TOKENS:,}; "
                        f"{_LENGTH_GRAMMAR}")
    return int(value)


def parse_lengths(spec: str) -> Lengths:
    """Parse a length spec (`N`, `fixed:N`, `uniform:A:B`, `lognormal:MEAN:SIGMA`)."""
    parts = spec.strip().split(":")
    kind, args = (("fixed", parts) if len(parts) == 1 else (parts[0].lower(), parts[1:]))
    if kind == "fixed" and len(args) == 1:
        return Lengths("fixed", _tokens(args[0], spec))
    if kind == "uniform" and len(args) == 2:
        low, high = _tokens(args[0], spec), _tokens(args[1], spec)
        if high < low:
            raise UserError(f"length spec {spec!r}: B must be >= A; {_LENGTH_GRAMMAR}")
        return Lengths("uniform", low, high)
    if kind == "lognormal" and len(args) == 2:
        mean, sigma = _number(args[0], spec, "MEAN"), _number(args[1], spec, "SIGMA")
        if not (1 <= mean <= MAX_TOKENS and 0 <= sigma <= MAX_SIGMA):
            raise UserError(f"length spec {spec!r}: MEAN must be from 1 to {MAX_TOKENS:,} and SIGMA from 0 "
                            f"to {MAX_SIGMA}; {_LENGTH_GRAMMAR}")
        return Lengths("lognormal", float(mean), float(sigma))
    raise UserError(f"length spec {spec!r}: {_LENGTH_GRAMMAR}")


class _LengthSource:
    """Draws (prompt, output) pairs: resampled jointly from a trace, overridden by length specs."""

    def __init__(self, pool: list[Request] | None, prompt: Lengths | None, output: Lengths | None) -> None:
        self.pairs = None if pool is None else np.array(
            [(request.prompt_tokens, request.output_tokens) for request in pool], dtype=np.int64)
        self.prompt = prompt
        self.output = output

    def sample(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        """`count` prompt lengths and `count` output lengths."""
        if self.pairs is not None:
            drawn = self.pairs[rng.integers(0, len(self.pairs), count)]
            prompts, outputs = drawn[:, 0], drawn[:, 1]
        if self.prompt is not None:
            prompts = self.prompt.sample(rng, count)
        if self.output is not None:
            outputs = self.output.sample(rng, count)
        return prompts, outputs


# ---------------------------------------------------------------------------------------------
# Trace rescaling


def delivered_rate(count: int, first_arrival_s: float, last_arrival_s: float) -> float | None:
    """The rate at which `count` requests arrive, in requests/s: (count − 1) / (last − first arrival).

    This is the one definition of a workload's rate (`mean_rate`, `rescale`, run summaries); None
    when it is undefined (fewer than two requests, or all arriving at once).
    """
    if count < 2 or last_arrival_s <= first_arrival_s:
        return None
    return (count - 1) / (last_arrival_s - first_arrival_s)


def mean_rate(requests: list[Request]) -> float:
    """Mean arrival rate of a trace in requests/s (`delivered_rate` of its arrival times)."""
    rate = delivered_rate(len(requests), requests[0].arrival_s, requests[-1].arrival_s) if requests else None
    if rate is None:
        raise UserError("cannot compute a trace's rate: it needs at least two distinct arrival times")
    return rate


def rescale(requests: list[Request], rate: float | None = None, *,
            rate_scale: float | None = None) -> list[Request]:
    """Stretch or compress a trace's arrival times; lengths and order are kept.

    Args:
        requests: the trace, sorted by arrival.
        rate: the new mean rate in requests/s (see `mean_rate`).
        rate_scale: alternatively, a factor on the rate (2 = twice as fast, gaps halved).
            Give exactly one of `rate` and `rate_scale`.
    """
    if (rate is None) == (rate_scale is None):
        raise UserError("give exactly one of a target rate and a rate scale factor")
    if rate is None:
        factor = _positive(rate_scale, "rate scale")
    else:
        factor = _positive(rate, "rate") / mean_rate(requests)
    return [Request(r.request_id, r.arrival_s / factor, r.prompt_tokens, r.output_tokens, r.prefix_hashes,
                    r.prefix_block_tokens, r.session_id, r.slo_class, r.priority) for r in requests]


# ---------------------------------------------------------------------------------------------
# Workloads


@dataclass(frozen=True)
class _WorkloadSpec:
    """A parsed `build_workload` request: where arrivals and lengths come from, and the bounds."""

    trace: list[Request] | None
    arrivals: Arrivals | None
    lengths: _LengthSource
    requests: int | None
    duration_s: float | None
    seed: int
    max_context: int | None
    overflow: str
    rate: float | None = None  # trace arrivals: deliver this rate on the `requests` kept


_ARRIVAL_GRAMMAR = "expected trace, poisson, gamma:CV, constant or ramp:START:END (rates in req/s)"
OVERFLOW_POLICIES = ("error", "truncate", "drop")


def _parse_arrival(arrival: str, rate: float | None, trace: list[Request] | None,
                   requests: int | None, duration_s: float | None) -> Arrivals | None:
    """The arrival process named by `arrival` (None for "trace")."""
    name, *args = arrival.strip().lower().split(":")
    try:
        values = [float(arg) for arg in args]
    except ValueError:
        raise UserError(f"arrival {arrival!r}: {_ARRIVAL_GRAMMAR}") from None
    if name == "trace" and not values:
        return None
    if name == "ramp" and len(values) == 2:
        if duration_s is None:
            total = values[0] + values[1]
            duration_s = 2.0 * (requests or 0) / total if total > 0 else 0.0
        return ramp(values[0], values[1], duration_s)
    if (name, len(values)) not in (("poisson", 0), ("constant", 0), ("gamma", 1)):
        raise UserError(f"arrival {arrival!r}: {_ARRIVAL_GRAMMAR}")
    if rate is None:
        if trace is None:
            raise UserError(f"arrival {arrival!r} needs a rate (req/s) or a trace to take the rate from")
        rate = mean_rate(trace)
    if name == "gamma":
        return gamma(rate, values[0])
    return poisson(rate) if name == "poisson" else constant(rate)


def _spec(trace: str | None, arrival: str, rate: float | None, rate_scale: float | None,
          requests: int | None, duration_s: float | None, prompt: str | None, output: str | None,
          seed: int, max_context: int | None, overflow: str) -> _WorkloadSpec:
    """Validate the arguments of `build_workload` / `iter_workload`."""
    if requests is not None and requests < 1:
        raise UserError(f"the number of requests must be >= 1, got {requests}")
    if arrival.strip().lower() != "trace" and requests is None and duration_s is None:
        raise UserError("a synthetic workload needs a number of requests or a duration")
    if duration_s is not None:
        _positive(duration_s, "duration (s)")
    if max_context is not None and max_context < 2:
        raise UserError(f"the context limit must be >= 2 tokens, got {max_context}")
    if overflow not in OVERFLOW_POLICIES:
        raise UserError(f"overflow policy {overflow!r}: expected one of {', '.join(OVERFLOW_POLICIES)}")
    pool = None if trace is None else load_trace(trace)
    process = _parse_arrival(arrival, rate, pool, requests, duration_s)
    prompt_spec = None if prompt is None else parse_lengths(prompt)
    output_spec = None if output is None else parse_lengths(output)
    if process is None:
        if pool is None:
            raise UserError("arrival 'trace' needs a trace; or choose poisson, gamma:CV, constant or ramp")
        if requests is not None and requests > len(pool):
            raise UserError(f"the trace {trace!r} has {len(pool)} requests, fewer than the {requests} "
                            "asked for; use a synthetic arrival (e.g. poisson) to draw more")
        if rate is not None:
            _positive(rate, "rate")
        if rate_scale is not None or (rate is not None and requests is None):
            pool = rescale(pool, rate, rate_scale=rate_scale)
            rate = None
        return _WorkloadSpec(pool, None, _LengthSource(None, prompt_spec, output_spec), requests,
                             duration_s, seed, max_context, overflow, rate)
    if rate_scale is not None:
        raise UserError("a rate scale applies to trace arrivals only; give a rate instead")
    if pool is None and (prompt_spec is None or output_spec is None):
        raise UserError("give both prompt and output length specs, or a trace to draw lengths from")
    return _WorkloadSpec(None, process, _LengthSource(pool, prompt_spec, output_spec), requests, duration_s,
                         seed, max_context, overflow)


def _fit(request: Request, max_context: int | None, overflow: str) -> Request | None:
    """Apply the context limit: the request, a truncated copy, None (dropped) or a UserError."""
    if max_context is None or request.prompt_tokens + request.output_tokens <= max_context:
        return request
    if overflow == "drop":
        return None
    if overflow == "error":
        raise UserError(
            f"request {request.request_id!r}: prompt {request.prompt_tokens} + output "
            f"{request.output_tokens} tokens exceed the context limit of {max_context} tokens "
            "(use overflow 'truncate' or 'drop', or a model with a longer context)")
    output = min(request.output_tokens, max_context - 1)
    prompt = max_context - output
    blocks = -(-prompt // request.prefix_block_tokens)
    return Request(request.request_id, request.arrival_s, prompt, output, request.prefix_hashes[:blocks],
                   request.prefix_block_tokens, request.session_id, request.slo_class, request.priority)


def _from_trace(spec: _WorkloadSpec, rng: np.random.Generator) -> Iterator[Request]:
    """The trace's own requests, prompt and/or output lengths overridden by the length specs."""
    assert spec.trace is not None
    prompt_spec, output_spec = spec.lengths.prompt, spec.lengths.output
    if prompt_spec is None and output_spec is None:
        yield from spec.trace
        return
    for start in range(0, len(spec.trace), CHUNK):
        chunk = spec.trace[start:start + CHUNK]
        prompts = ([r.prompt_tokens for r in chunk] if prompt_spec is None
                   else prompt_spec.sample(rng, len(chunk)).tolist())
        outputs = ([r.output_tokens for r in chunk] if output_spec is None
                   else output_spec.sample(rng, len(chunk)).tolist())
        for r, prompt, output in zip(chunk, prompts, outputs, strict=True):
            hashes = r.prefix_hashes if prompt_spec is None else ()
            yield Request(r.request_id, r.arrival_s, prompt, output, hashes, r.prefix_block_tokens,
                          r.session_id, r.slo_class, r.priority)


def _synthetic(spec: _WorkloadSpec, arrival_rng: np.random.Generator,
               length_rng: np.random.Generator) -> Iterator[Request]:
    """Requests numbered from 0 with arrivals from the process and lengths from the length source."""
    assert spec.arrivals is not None
    times = spec.arrivals.iter_times(arrival_rng)
    index = 0
    while True:
        arrivals = list(islice(times, CHUNK))
        if not arrivals:
            return
        prompts, outputs = spec.lengths.sample(length_rng, len(arrivals))
        for arrival_s, prompt, output in zip(arrivals, prompts.tolist(), outputs.tolist(), strict=True):
            yield Request(str(index), arrival_s, prompt, output)
            index += 1


def _bounded(spec: _WorkloadSpec) -> Iterator[Request]:
    """The workload of `spec`: generated, context-limited and cut at its request/duration bounds."""
    arrival_seed, length_seed = np.random.SeedSequence(spec.seed).spawn(2)
    length_rng = np.random.default_rng(length_seed)
    source = (_from_trace(spec, length_rng) if spec.arrivals is None
              else _synthetic(spec, np.random.default_rng(arrival_seed), length_rng))
    fitted = (f for r in source if (f := _fit(r, spec.max_context, spec.overflow)) is not None)
    if spec.rate is not None:  # take the requests first, then make them arrive at the rate
        kept = list(islice(fitted, spec.requests))
        fitted = iter(rescale(kept, spec.rate) if len(kept) > 1 else kept)
    for count, request in enumerate(fitted):
        if spec.requests is not None and count >= spec.requests:
            return
        if spec.duration_s is not None and request.arrival_s >= spec.duration_s:
            return
        yield request


def iter_workload(trace: str | None = None, *, arrival: str = "trace", rate: float | None = None,
                  rate_scale: float | None = None, requests: int | None = None,
                  duration_s: float | None = None, prompt: str | None = None, output: str | None = None,
                  seed: int = 0, max_context: int | None = None,
                  overflow: str = "error") -> Iterator[Request]:
    """Stream the workload `build_workload` would return, `CHUNK` requests at a time.

    Memory stays bounded for synthetic arrivals (a 1,000,000-request run is never held as a list).
    The arguments are validated (and a named trace loaded) before the first request is produced,
    so a bad argument raises `UserError` at the call, not at the first `next()`.
    """
    spec = _spec(trace, arrival, rate, rate_scale, requests, duration_s, prompt, output, seed,
                 max_context, overflow)
    return _bounded(spec)


def build_workload(trace: str | None, *, arrival: str = "trace", rate: float | None = None,
                   requests: int | None = None, duration_s: float | None = None,
                   prompt: str | None = None, output: str | None = None, seed: int = 0,
                   max_context: int | None = None, rate_scale: float | None = None,
                   overflow: str = "error") -> list[Request]:
    """The requests of a workload, sorted by arrival, the first at 0 s.

    Args:
        trace: a bundled trace name or trace file: the arrivals when `arrival` is "trace", else the
            empirical distribution of (prompt, output) lengths; None for purely synthetic lengths.
        arrival: "trace", "poisson", "gamma:CV", "constant" or "ramp:START:END" (rates in req/s; the
            ramp spans `duration_s`, or, when only `requests` is given, the time in which its mean
            rate yields that many requests).
        rate: requests/s. For "trace", rescales the arrivals so that the requests returned arrive
            at this rate by `delivered_rate` ((n − 1) / (last − first arrival)): with `requests`
            the first `requests` requests are taken first and then rescaled; without it the whole
            trace is (and `duration_s` then cuts it). None keeps the trace's times. For poisson /
            gamma / constant, the rate (None takes the trace's mean rate).
        requests: at most this many requests (the first ones).
        duration_s: only requests arriving before this time (seconds).
        prompt: a length spec overriding prompt lengths (see `parse_lengths`).
        output: a length spec overriding output lengths.
        seed: seed of the arrival and length random streams.
        max_context: the model's context limit in tokens (prompt + output), None for no limit.
        rate_scale: for "trace" arrivals, a factor on the trace's rate instead of `rate`.
        overflow: what to do with a request over `max_context`: "error" (UserError naming the
            request), "truncate" (cut the prompt, and the output to at most max_context - 1
            tokens, so that prompt + output = max_context) or "drop" (leave it out).

    Raises:
        UserError: a bad argument, an unreadable trace, or a request over the context limit.
    """
    return list(iter_workload(trace, arrival=arrival, rate=rate, rate_scale=rate_scale, requests=requests,
                              duration_s=duration_s, prompt=prompt, output=output, seed=seed,
                              max_context=max_context, overflow=overflow))
