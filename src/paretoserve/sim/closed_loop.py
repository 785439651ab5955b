"""Load generators that cap the requests in flight, run inside the simulation.

`CappedClient(requests, cap)` sends the requests in their order; request i goes out at
max(its `arrival_s` — the time it is due —, the previous send, the first moment fewer than `cap`
requests are in flight). With every `arrival_s` = 0 this is a closed loop of `cap` users: each user
sends its next request the moment its previous one completes (`vllm bench serve
--max-concurrency C`, GuideLLM's concurrent profile, aiperf `--concurrency C`). Every request is
attributed to the user (0 … cap − 1) whose slot it occupies; a user has at most one request in
flight.

With `warmup` = W the first W requests are a warm-up phase run the same way, and the first measured
request waits until every warm-up request has completed; then the free users all send at that
instant. This is aiperf's `--warmup-request-count W` (engine_facts.md §1 "AIC's benchmark harness"
names the client and its flags; the phase rules are read from aiperf's source. aiperf 0.3.0, the
version AIC's sflow harness pins: `aiperf/timing/credit_issuing_strategy.py` `_execute_phases`
waits for every credit of a phase to return before the next phase starts, and the
concurrency-burst rate generator of `request_rate_strategy.py` issues credits with no delay, so the
profiling phase opens with all C users sending at once. aiperf 0.13.0 keeps both by default in
`aiperf/timing/config.py`: a warm-up phase is never `seamless`, and `concurrency_ramp_duration_sec`
None means "concurrency starts at target immediately").

A completion is seen as the simulation streams its record, before the simulator's next event: the
request that waits for a slot has `arrival_s` = ∞ until then, and the simulator reads the next
request's arrival afresh at every event, so settling it between two events is seen at once.

`MeasuredWindow` says which requests of a closed-loop run are summarised.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from paretoserve.errors import UserError
from paretoserve.metrics.records import RequestRecord
from paretoserve.workload.request import Request

#: `extra["phase"]` of a record left out of the summary before the measurement / at its end.
WARMUP, COOLDOWN = "warmup", "cooldown"


@dataclass(slots=True)
class _Send:
    """A request as the load generator sends it: `Request`'s fields, with an `arrival_s` (the send
    time) that stays `math.inf` until a slot frees."""

    request_id: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_hashes: tuple[int, ...] = ()
    prefix_block_tokens: int = 512
    session_id: str | None = None
    slo_class: str | None = None
    priority: int = 0


class CappedClient:
    """At most `cap` requests in flight, each request sent no earlier than its `arrival_s`; the
    first `warmup` requests a warm-up phase that drains before the rest are sent (module docstring).

    Use `requests()` as the simulation's request stream and pass every record the simulation
    produces to `completed` before asking it for the next one (`Simulation` does this itself when
    given `concurrency`). Records get `extra["user"]`, the slot (user) that sent the request, and
    warm-up records `extra["phase"]` = "warmup".
    """

    def __init__(self, requests: Iterable[Request], cap: int, *, warmup: int = 0) -> None:
        if cap < 1:
            raise UserError(f"concurrency must be >= 1, got {cap}", field="concurrency")
        if warmup < 0:
            raise UserError(f"warm-up requests must be >= 0, got {warmup}", field="warmup")
        self._source = requests
        self.cap = cap
        self.warmup = warmup
        self.sent = self.done = 0
        self._last_send = 0.0
        self._free = list(range(cap - 1, -1, -1))  # free user slots, lowest on top
        self._user: dict[str, tuple[int, bool]] = {}  # in flight: id -> (user, warm-up request)
        self._waiting: tuple[_Send, float] | None = None

    def _may_send(self) -> bool:
        """A slot is free, and the next request is not the first measured one before the warm-up
        phase has drained."""
        return self.sent - self.done < self.cap and (self.sent != self.warmup or self.done >= self.warmup)

    def _send(self, item: _Send, due: float, now: float) -> None:
        item.arrival_s = self._last_send = max(due, self._last_send, now)
        self._user[item.request_id] = (self._free.pop(), self.sent < self.warmup)
        self.sent += 1

    def requests(self) -> Iterator[_Send]:
        """The requests to simulate, each settled or waiting for a slot when the simulator asks."""
        for q in self._source:
            item = _Send(q.request_id, math.inf, q.prompt_tokens, q.output_tokens, q.prefix_hashes,
                         q.prefix_block_tokens, q.session_id, q.slo_class, q.priority)
            if self._may_send():
                self._send(item, q.arrival_s, 0.0)
            else:
                self._waiting = (item, q.arrival_s)
            yield item

    def completed(self, record: RequestRecord) -> None:
        """`record`'s request finished (or failed): free its slot and send a waiting request."""
        self.done += 1
        user, warm = self._user.pop(record.request_id)
        record.extra["user"] = user
        if warm:
            record.extra["phase"] = WARMUP
        self._free.append(user)
        self._free.sort(reverse=True)
        if self._waiting is not None and self._may_send():
            item, due = self._waiting
            self._waiting = None
            self._send(item, due, record.last_token_s if record.last_token_s is not None else record.arrival_s)


class MeasuredWindow:
    """Which completions of a closed loop of C users enter the summary.

    The client's `warmup` warm-up requests (records marked "warmup" by `CappedClient`) never do.
    Of the `requests` measured requests after them:
    - `steady=True` (the steady state): the first 2·C and the last C completions are left out too
      and marked "warmup" / "cooldown" — the users start together, so the first completions carry
      one long prefill queue, and after the last request is sent fewer than C users remain and the
      batch drains. `requests` must exceed 3·C so that some remain.
    - `steady=False` (as aiperf reports a run): every measured request, the ramp-up and the drain
      included. engine_facts.md §1: aiperf's summary statistics are taken across the requests of
      the run; aiperf 0.3.0 `records/records_manager.py` `_on_metric_records` drops only records
      of a non-profiling (warm-up) phase.
    """

    def __init__(self, users: int, requests: int, *, warmup: int = 0, steady: bool = True) -> None:
        self.warmup = warmup
        self.ramp, self.cooldown = (2 * users, users) if steady else (0, 0)
        if requests <= self.ramp + self.cooldown:
            raise UserError(f"a closed loop of {users} users needs more than {self.ramp + self.cooldown} "
                            f"requests ({self.ramp} warm-up and {self.cooldown} cool-down completions are "
                            f"not summarised); got {requests}", field="requests")
        self.requests = requests
        self.warm_seen = self.seen = 0

    @property
    def measuring(self) -> bool:
        """True while the completions are summarised (for per-step samples): after the client's
        warm-up and, in the steady state, between its ramp and cool-down."""
        return self.warm_seen >= self.warmup and self.ramp <= self.seen < self.requests - self.cooldown

    def measured(self, record: RequestRecord) -> bool:
        """Take the next completion (in completion order): True when it is summarised.

        Completions left out of the steady state are marked `extra["phase"]` = "warmup" / "cooldown".
        """
        if record.extra.get("phase") == WARMUP:
            self.warm_seen += 1
            return False
        self.seen += 1
        phase = (WARMUP if self.seen <= self.ramp
                 else COOLDOWN if self.seen > self.requests - self.cooldown else None)
        if phase is not None:
            record.extra["phase"] = phase
        return phase is None
