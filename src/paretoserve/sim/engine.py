"""The event loop: a heap of timestamped events and a clock, no fixed time step.

Events are request arrivals (pulled one at a time from the request iterable, which must be sorted
by arrival), the end of each replica's step (or fast-forwarded run), and the end of KV transfers
under disaggregation (the first token, computed by the prefill, reaches the user with the transfer,
so TTFT includes it). Ties go to arrivals first (a request arriving exactly at an iteration
boundary is seen by that boundary's scheduler), then in push order. Records stream out as requests
complete, so memory stays flat however many requests flow through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from heapq import heappop, heappush

from paretoserve.errors import UserError
from paretoserve.metrics.records import RequestRecord
from paretoserve.sim.closed_loop import CappedClient
from paretoserve.sim.cluster import build_pools, decode_router, make_router
from paretoserve.sim.config import DisaggConfig, EngineConfig
from paretoserve.sim.iteration import IterationRow
from paretoserve.sim.replica import INF, Replica
from paretoserve.sim.sequence import Sequence
from paretoserve.workload.request import Request

_STEP, _WAKE, _TRANSFER = 0, 1, 2


@dataclass(frozen=True, slots=True)
class ReplicaStats:
    """What one replica did.

    Attributes:
        index: replica index.
        role: "serve", "prefill" or "decode".
        engine: its engine configuration.
        busy_s: seconds spent computing iterations.
        iterations: engine iterations.
        steps: scheduling steps (a fast-forwarded run counts once).
        preemptions: preemptions.
        kv_peak_fraction: highest fraction of its KV blocks referenced at once.
    """

    index: int
    role: str
    engine: EngineConfig
    busy_s: float
    iterations: int
    steps: int
    preemptions: int
    kv_peak_fraction: float


@dataclass(frozen=True, slots=True)
class SimStats:
    """Totals of a simulated run.

    Attributes:
        duration_s: time of the last event (last token or arrival), seconds from t = 0.
        requests: requests that arrived.
        failed: requests rejected (they can never fit in the KV cache).
        replicas: per-replica figures.
    """

    duration_s: float
    requests: int
    failed: int
    replicas: tuple[ReplicaStats, ...]

    @property
    def preemptions(self) -> int:
        """Preemptions over all replicas."""
        return sum(r.preemptions for r in self.replicas)

    @property
    def kv_peak_fraction(self) -> float:
        """Highest KV usage fraction reached on any replica."""
        return max((r.kv_peak_fraction for r in self.replicas), default=0.0)

    @property
    def iterations(self) -> int:
        """Engine iterations over all replicas."""
        return sum(r.iterations for r in self.replicas)


def _ignore_itl(value_s: float, count: int) -> None:
    """Default ITL sink."""


class Simulation:
    """A simulated run: iterate it (once) for the `RequestRecord`s in completion order.

    Args:
        requests: requests sorted by `arrival_s` (any iterable; consumed lazily).
        engine: configuration of every replica (None under disaggregation).
        replicas: data-parallel replicas.
        router: router name (see `paretoserve.sim.cluster.ROUTERS`).
        disagg: disaggregated prefill/decode deployment, or None.
        fast: fast-forward decode runs (False: reference, one iteration at a time).
        on_itl: receives (gap seconds, count) for every inter-token gap.
        on_iteration: receives an `IterationRow` per step.
        concurrency: at most this many requests in flight, each sent no earlier than its
            `arrival_s` (all arrivals 0: a closed loop of that many users); see `CappedClient`.
            Records then carry `extra["user"]`.
        warmup: with `concurrency`, the first `warmup` requests are a warm-up phase that drains
            before the rest are sent (`CappedClient`); their records carry `extra["phase"]`.
    """

    def __init__(self, requests: Iterable[Request], *, engine: EngineConfig | None, replicas: int = 1,
                 router: str = "round_robin", disagg: DisaggConfig | None = None, fast: bool = True,
                 on_itl: Callable[[float, int], None] | None = None,
                 on_iteration: Callable[[IterationRow], None] | None = None,
                 concurrency: int | None = None, warmup: int = 0) -> None:
        self._client = None if concurrency is None else CappedClient(requests, concurrency, warmup=warmup)
        self._requests = requests if self._client is None else self._client.requests()
        self._outbox: list[RequestRecord] = []
        self._heap: list[tuple[float, int, int, object, int]] = []
        self._pushes = 0
        self._started = False
        self.disagg = disagg
        self.front, self.back = build_pools(engine, replicas, disagg, fast=fast, on_done=self._done,
                                            on_itl=on_itl or _ignore_itl, on_handoff=self._handoff,
                                            on_iteration=on_iteration)
        self.router = make_router(router)
        self.back_router = decode_router(router)
        pools = self.front + self.back
        self.replicas = pools
        self.block_size = pools[0].bs
        self.max_blocks = min(r.kv.num_blocks - r.kv.watermark_blocks for r in pools)
        self.kv_layout = pools[0].config.kv_layout
        limits = [r.config.max_model_len for r in pools if r.config.max_model_len]
        self.max_model_len = min(limits) if limits else None
        self.now = 0.0
        self.arrived = 0
        self.failed = 0

    # ------------------------------------------------------------------ results
    @property
    def stats(self) -> SimStats:
        """Totals so far (final once iteration is over)."""
        roles = ("prefill", "decode") if self.disagg else ("serve", "serve")
        return SimStats(
            duration_s=self.now, requests=self.arrived, failed=self.failed,
            replicas=tuple(ReplicaStats(
                index=r.index, role=roles[r in self.back], engine=r.config, busy_s=r.busy_s,
                iterations=r.iterations, steps=r.steps, preemptions=r.preemptions,
                kv_peak_fraction=r.kv.peak_used / r.kv.num_blocks) for r in self.replicas))

    # ------------------------------------------------------------------ loop
    def __iter__(self) -> Iterator[RequestRecord]:
        if self._started:
            raise RuntimeError("a Simulation can be iterated only once")
        self._started = True
        heap, outbox = self._heap, self._outbox
        front = self.front
        single = len(front) == 1 and not self.back
        only = front[0]
        route = self.router.choose
        handoff = self.disagg is not None
        requests = iter(self._requests)
        upcoming = next(requests, None)
        last_arrival = 0.0
        while True:
            ta = upcoming.arrival_s if upcoming is not None else INF
            if heap and heap[0][0] < ta:
                t, _, kind, obj, version = heappop(heap)
                if kind == _STEP:
                    replica: Replica = obj  # type: ignore[assignment]
                    if version != replica.version:
                        continue
                    self.now = t
                    replica.finish()
                    end = replica.start(t, ta if single else INF)
                    if end < INF:
                        self._push(end, _STEP, replica, replica.version)
                elif kind == _WAKE:  # an idle replica starts once every arrival at `t` is queued
                    replica = obj  # type: ignore[assignment]
                    replica.end = INF
                    end = replica.start(t, ta if single else INF)
                    if end < INF:
                        self._push(end, _STEP, replica, replica.version)
                else:  # KV transfer done: the first token reaches the user with it
                    self.now = t
                    seq, replica = obj  # type: ignore[misc]
                    seq.first_token_s = seq.last_token_s = t
                    self._deliver(replica, seq, t, ta, False)
            elif upcoming is not None:
                request = upcoming
                upcoming = next(requests, None)
                if ta < last_arrival:
                    raise UserError(f"request {request.request_id}: arrival_s {ta} is before the previous "
                                    f"request's {last_arrival}; requests must be sorted by arrival",
                                    field="arrival_s")
                last_arrival = ta
                if ta > self.now:
                    self.now = ta
                seq = Sequence(request, self.arrived, self.block_size)
                self.arrived += 1
                problem = self._check(request)
                if problem:
                    self.failed += 1
                    outbox.append(RequestRecord(request.request_id, ta, request.prompt_tokens, 0,
                                                error=problem))
                else:
                    replica = only if single else route(seq, front)
                    seq.replica = replica.index
                    seq.handoff = handoff
                    replica.outstanding += 1
                    self._deliver(replica, seq, ta, upcoming.arrival_s if upcoming is not None else INF,
                                  single)
            else:
                break
            if outbox:
                if self._client is not None:
                    for record in outbox:
                        self._client.completed(record)
                yield from outbox
                outbox.clear()

    def _push(self, t: float, kind: int, obj: object, version: int) -> None:
        self._pushes += 1
        heappush(self._heap, (t, self._pushes, kind, obj, version))

    def _deliver(self, replica: Replica, seq: Sequence, t: float, next_arrival: float,
                 single: bool) -> None:
        """`seq` reaches `replica` at `t`: start an idle replica, or cut a run it could change.

        An idle replica starts at once unless more arrivals or events share the instant `t`; then
        a wake-up event starts it after all of them are queued.
        """
        if replica.idle(t):
            replica.arrive(seq)
            heap = self._heap
            if next_arrival > t and (not heap or heap[0][0] > t):
                end = replica.start(t, next_arrival if single else INF)
                if end < INF:
                    self._push(end, _STEP, replica, replica.version)
            else:
                replica.end = t  # busy from now on: the wake-up event starts its first step
                self._push(t, _WAKE, replica, replica.version)
            return
        interrupts = replica.k > 1 and replica.horizon > t and replica.scheduler.arrival_interrupts(replica)
        replica.arrive(seq)
        if interrupts and replica.shorten(t):
            replica.version += 1
            self._push(replica.end, _STEP, replica, replica.version)

    def _check(self, request: Request) -> str | None:
        """UserError for impossible lengths; an error text for a request that can never fit."""
        prompt, output = request.prompt_tokens, request.output_tokens
        if prompt < 1 or output < 1:
            field = "prompt_tokens" if prompt < 1 else "output_tokens"
            raise UserError(f"request {request.request_id}: {field} must be >= 1", field=field)
        if self.max_model_len is not None and prompt + output > self.max_model_len:
            raise UserError(f"request {request.request_id}: prompt {prompt} + output {output} tokens "
                            f"exceed the model's context of {self.max_model_len} tokens",
                            field="prompt_tokens")
        bs = self.block_size
        fixed = self.kv_layout.fixed_blocks(prompt + output) if self.kv_layout else 0
        if (prompt + output - 1 + bs - 1) // bs + fixed > self.max_blocks:
            return (f"kv_capacity: needs {prompt + output - 1} tokens of KV, a replica holds "
                    f"{self.max_blocks * bs}")
        return None

    # ------------------------------------------------------------------ replica callbacks
    def _done(self, seq: Sequence) -> None:
        request = seq.request
        record = RequestRecord(request.request_id, request.arrival_s, seq.prompt, seq.generated,
                               seq.scheduled_s, seq.first_token_s, seq.last_token_s, seq.preemptions,
                               seq.replica, None, None, max(seq.first_hit, 0))
        if seq.decode_replica >= 0:
            record.extra["decode_replica"] = seq.decode_replica
        self._outbox.append(record)

    def _handoff(self, seq: Sequence, t: float) -> None:
        assert self.disagg is not None
        replica = self.back_router.choose(seq, self.back)
        replica.outstanding += 1
        seq.decode_replica = replica.index
        self._push(t + self.disagg.transfer_seconds(seq.prompt), _TRANSFER, (seq, replica), 0)
