"""Load generators that cap the requests in flight, run inside the simulation.

`CappedClient(requests, cap)` sends the requests in their order; request i goes out at
max(its `arrival_s` — the time it is due —, the previous send, the first moment fewer than `cap`
requests are in flight). With every `arrival_s` = 0 this is a closed loop of `cap` users: each user
sends its next request the moment its previous one completes (`vllm bench serve
--max-concurrency C`, GuideLLM's concurrent profile, aiperf `--concurrency C`). Every request is
attributed to the user (0 … cap − 1) whose slot it occupies; a user has at most one request in
flight.

A completion is seen as the simulation streams its record, before the simulator's next event: the
request that waits for a slot has `arrival_s` = ∞ until then, and the simulator reads the next
request's arrival afresh at every event, so settling it between two events is seen at once.

`SteadyWindow` is the benchmarks' rule for which requests of a closed-loop run are summarised.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from paretoserve.errors import UserError
from paretoserve.metrics.records import RequestRecord
from paretoserve.workload.request import Request


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
    """At most `cap` requests in flight, each request sent no earlier than its `arrival_s`.

    Use `requests()` as the simulation's request stream and pass every record the simulation
    produces to `completed` before asking it for the next one (`Simulation` does this itself when
    given `concurrency`). Records get `extra["user"]`, the slot (user) that sent the request.
    """

    def __init__(self, requests: Iterable[Request], cap: int) -> None:
        if cap < 1:
            raise UserError(f"concurrency must be >= 1, got {cap}", field="concurrency")
        self._source = requests
        self.cap = cap
        self.sent = self.done = 0
        self._last_send = 0.0
        self._free = list(range(cap - 1, -1, -1))  # free user slots, lowest on top
        self._user: dict[str, int] = {}
        self._waiting: tuple[_Send, float] | None = None

    def _send(self, item: _Send, due: float, now: float) -> None:
        item.arrival_s = self._last_send = max(due, self._last_send, now)
        self._user[item.request_id] = self._free.pop()
        self.sent += 1

    def requests(self) -> Iterator[_Send]:
        """The requests to simulate, each settled or waiting for a slot when the simulator asks."""
        for q in self._source:
            item = _Send(q.request_id, math.inf, q.prompt_tokens, q.output_tokens, q.prefix_hashes,
                         q.prefix_block_tokens, q.session_id, q.slo_class, q.priority)
            if self.sent - self.done < self.cap:
                self._send(item, q.arrival_s, 0.0)
            else:
                self._waiting = (item, q.arrival_s)
            yield item

    def completed(self, record: RequestRecord) -> None:
        """`record`'s request finished (or failed): free its slot and send a waiting request."""
        self.done += 1
        user = self._user.pop(record.request_id)
        record.extra["user"] = user
        self._free.append(user)
        self._free.sort(reverse=True)
        if self._waiting is not None:
            item, due = self._waiting
            self._waiting = None
            self._send(item, due, record.last_token_s if record.last_token_s is not None else record.arrival_s)


class SteadyWindow:
    """Which completions of a closed loop of C users enter the summary: the benchmarks' rule.

    The first `warmup` = 2·C completions are warm-up (AIC's benchmark harness sends
    `--warmup-request-count = 2·C` before measuring; they start together, so their TTFT is one
    long prefill queue) and the last C completions are cool-down (after the last request is sent,
    fewer than C users remain and the batch drains). The rest are measured. `requests` must exceed
    3·C so that some remain.
    """

    def __init__(self, users: int, requests: int) -> None:
        self.warmup, self.cooldown = 2 * users, users
        if requests <= self.warmup + self.cooldown:
            raise UserError(f"a closed loop of {users} users needs more than {self.warmup + self.cooldown} "
                            f"requests ({self.warmup} warm-up and {self.cooldown} cool-down completions are "
                            f"not summarised); got {requests}", field="requests")
        self.requests = requests
        self.seen = 0

    @property
    def measuring(self) -> bool:
        """True between the end of warm-up and the start of cool-down (for per-step samples)."""
        return self.warmup <= self.seen < self.requests - self.cooldown

    def measured(self, record: RequestRecord) -> bool:
        """Take the next completion (in completion order): True when it is summarised.

        Warm-up and cool-down records are marked `extra["phase"]` = "warmup" / "cooldown".
        """
        self.seen += 1
        phase = ("warmup" if self.seen <= self.warmup
                 else "cooldown" if self.seen > self.requests - self.cooldown else None)
        if phase is not None:
            record.extra["phase"] = phase
        return phase is None
