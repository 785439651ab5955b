"""`PipelineReplica`: one engine instance with pp > 1 pipeline stages, scheduled like vLLM's.

vLLM keeps up to `pp` scheduled batches in flight, one per stage (`step_with_batch_queue`,
engine_facts §3 "Pipeline parallel"); a request of a batch in flight is not scheduled again until
that batch returns. Here the replica is `pp` lanes — `Replica` objects that share one KV block
manager and one waiting queue — each with at most one batch in flight. A lane's batch holds each
stage for the step model's `stage_seconds` (slowest stage + one send, `paretoserve.perf.pipeline`),
so its iteration takes pp × stage seconds; the first stage accepts the next batch (of another
lane) when it frees, stage seconds after the previous batch entered it.

Simplifications: a request stays in the lane that admitted it (in vLLM a returning request may join
any later batch; in a saturated pipeline the two coincide); each lane may run up to
max_num_seqs // pp sequences (vLLM caps all running requests together at max_num_seqs, split
evenly between the batches in steady state); lanes step one iteration at a time (no decode
fast path); a lane's victim for preemption is its own newest request.

Units: seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from paretoserve.perf.base import StepTimeModel
from paretoserve.perf.shape import StepShape, StepTime
from paretoserve.sim.config import EngineConfig
from paretoserve.sim.iteration import IterationRow
from paretoserve.sim.kvcache import BlockManager
from paretoserve.sim.replica import INF, Replica
from paretoserve.sim.schedulers import make_scheduler
from paretoserve.sim.sequence import Sequence


class _PipelineIteration(StepTimeModel):
    """A lane's iteration: its batch passes all pp stages, each held for `stage_seconds`."""

    def __init__(self, inner: StepTimeModel) -> None:
        self.inner = inner

    def step_time(self, shape: StepShape) -> StepTime:
        return StepTime(self.seconds(shape), self.inner.step_time(shape).ops)

    def seconds(self, shape: StepShape) -> float:
        return self.inner.pp * self.inner.stage_seconds(shape)

    def decode_seconds(self, n: int, context_sum: int) -> float:
        if n <= 0:
            return 0.0
        return self.inner.pp * self.inner.decode_stage_seconds(n, context_sum)


class PipelineReplica:
    """A pipeline-parallel engine instance; the event loop drives it like a `Replica`
    (`arrive`, `idle`, `start`, `finish`; with `k` = 1 it is never asked to `shorten` a step).

    Args: as `Replica` (without `fast`: lanes always step one iteration at a time).
    """

    def __init__(self, index: int, config: EngineConfig, *,
                 on_done: Callable[[Sequence], None],
                 on_itl: Callable[[float, int], None],
                 on_handoff: Callable[[Sequence, float], None] | None = None,
                 on_iteration: Callable[[IterationRow], None] | None = None) -> None:
        self.index = index
        self.config = config
        self.pp = pp = config.step_model.pp
        self.bs = config.block_size
        self.kv = BlockManager(config.num_blocks, config.block_size,
                               prefix_caching=config.prefix_caching, watermark=config.watermark)
        self.scheduler = make_scheduler(config)
        lane_config = replace(config, step_model=_PipelineIteration(config.step_model))
        cap = max(1, config.max_num_seqs // pp)
        self.lanes = [Replica(index, lane_config, fast=False, on_done=on_done, on_itl=on_itl,
                              on_handoff=on_handoff, on_iteration=on_iteration, kv=self.kv,
                              scheduler=self.scheduler, max_seqs=cap, lane=True) for _ in range(pp)]
        self.now = 0.0
        self.end = INF
        self.stage_free = 0.0   # when the first stage can take the next batch
        self.k = 1              # one iteration per step: arrivals never shorten a step
        self.horizon = INF
        self.version = 0
        self._outstanding = 0

    # ------------------------------------------------------------------ what the loop reads
    @property
    def outstanding(self) -> int:
        """Requests routed here and not yet released (queued, running or in flight)."""
        return self._outstanding + sum(lane.outstanding for lane in self.lanes)

    @outstanding.setter
    def outstanding(self, value: int) -> None:
        self._outstanding = value - sum(lane.outstanding for lane in self.lanes)

    @property
    def busy_s(self) -> float:
        """Seconds the first stage held batches (each device's busy time)."""
        return sum(lane.busy_s for lane in self.lanes) / self.pp

    @property
    def iterations(self) -> int:
        return sum(lane.iterations for lane in self.lanes)

    @property
    def steps(self) -> int:
        return sum(lane.steps for lane in self.lanes)

    @property
    def preemptions(self) -> int:
        return sum(lane.preemptions for lane in self.lanes)

    # ------------------------------------------------------------------ driving
    def arrive(self, seq: Sequence) -> None:
        """Queue a request (considered when the first stage next takes a batch)."""
        self.scheduler.add(seq, self.now)

    def idle(self, t: float) -> bool:
        """Whether an arrival at `t` should reconsider the pipeline now: a lane has no batch in
        flight and no event is pending at `t`."""
        return self.end != t and any(lane.end == INF for lane in self.lanes)

    def start(self, now: float, horizon: float = INF) -> float:
        """Put the next batch into the first stage if it is free; returns the next event time
        (a batch returning, or the first stage freeing while work waits), inf when there is none.
        Each call invalidates the events pushed before it (`version`)."""
        self.version += 1
        self.now = now
        lanes = self.lanes
        if self.stage_free <= now:
            for lane in sorted((x for x in lanes if x.end == INF), key=lambda x: x.now):
                end = lane.start(now)
                if end < INF:
                    self.stage_free = now + (end - now) / self.pp
                    break
        nxt = min((lane.end for lane in lanes), default=INF)
        waiting = len(self.scheduler) > 0
        if self.stage_free > now and any(lane.end == INF and (lane.running or waiting) for lane in lanes):
            nxt = min(nxt, self.stage_free)
        if nxt == INF and (waiting or any(lane.running for lane in lanes)):
            raise RuntimeError(f"replica {self.index} stalled at t={now:.6f}s with "
                               f"{sum(len(x.running) for x in lanes)} running and "
                               f"{len(self.scheduler)} waiting")
        self.end = nxt
        return nxt

    def finish(self) -> None:
        """Apply every batch that returns at `self.end`."""
        t = self.end
        for lane in self.lanes:
            if lane.end <= t:
                lane.finish()
        self.now = t
        self.end = INF
