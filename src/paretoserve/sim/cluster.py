"""Replicas of a deployment: data-parallel replicas behind a router, or disaggregated pools.

Routers pick the replica an arriving request goes to:

- ``round_robin``: replicas in turn;
- ``least_outstanding``: the replica with the fewest requests queued, running or in transfer to it
  (ties: lowest index);
- ``prefix_affinity``: the replica that was sent the longest prefix of the request before
  (SGLang's cache-aware routing), unless it has more than `slack` requests more outstanding than the
  least loaded one; requests without prefix hashes go to the least loaded.

Under disaggregation (`DisaggConfig`) arrivals are routed over the prefill pool; after its first
token a request is routed over the decode pool (round robin if that is the router, otherwise least
outstanding) when its KV transfer starts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Sequence as Seq
from operator import attrgetter
from typing import ClassVar

from paretoserve.errors import UserError
from paretoserve.sim.config import DisaggConfig, EngineConfig
from paretoserve.sim.iteration import IterationRow
from paretoserve.sim.pipeline import PipelineReplica
from paretoserve.sim.replica import Replica
from paretoserve.sim.sequence import Sequence

_load = attrgetter("outstanding")


class Router(ABC):
    """Chooses a replica for each request."""

    name: ClassVar[str]

    @abstractmethod
    def choose(self, seq: Sequence, replicas: Seq[Replica]) -> Replica:
        """The replica `seq` goes to."""


class RoundRobin(Router):
    """Replicas in turn."""

    name = "round_robin"

    def __init__(self) -> None:
        self.turn = 0

    def choose(self, seq: Sequence, replicas: Seq[Replica]) -> Replica:
        replica = replicas[self.turn % len(replicas)]
        self.turn += 1
        return replica


class LeastOutstanding(Router):
    """Fewest outstanding requests (ties: lowest index)."""

    name = "least_outstanding"

    def choose(self, seq: Sequence, replicas: Seq[Replica]) -> Replica:
        return min(replicas, key=_load)


class PrefixAffinity(Router):
    """Longest prefix already routed to a replica, bounded by load imbalance (`slack` requests).

    Like SGLang's cache-aware router, it keeps its own approximate view of each replica's cache —
    the prefix hashes it sent there, least recently routed forgotten first beyond the replica's KV
    capacity — rather than reading the engines' caches.
    """

    name = "prefix_affinity"

    def __init__(self, slack: int = 8) -> None:
        self.slack = slack
        self.routed: dict[int, OrderedDict[tuple[int, int], None]] = {}

    def choose(self, seq: Sequence, replicas: Seq[Replica]) -> Replica:
        least = min(replicas, key=_load)
        hashes = seq.request.prefix_hashes
        if not hashes:
            return least
        best, best_len = least, 0
        for replica in replicas:
            table = self.routed.get(replica.index)
            length = 0
            if table:
                while length < len(hashes) and (hashes[length], length) in table:
                    length += 1
            if length > best_len or (length == best_len and replica.outstanding < best.outstanding):
                best, best_len = replica, length
        chosen = least if best.outstanding > least.outstanding + self.slack else best
        self._remember(chosen, seq.request.prefix_hashes, seq.request.prefix_block_tokens)
        return chosen

    def _remember(self, replica: Replica, hashes: tuple[int, ...], tokens_per_hash: int) -> None:
        table = self.routed.setdefault(replica.index, OrderedDict())
        for position, value in enumerate(hashes):
            key = (value, position)
            table[key] = None
            table.move_to_end(key)
        capacity = max(1, replica.kv.num_blocks * replica.kv.block_size // tokens_per_hash)
        while len(table) > capacity:
            table.popitem(last=False)


ROUTERS: dict[str, type[Router]] = {cls.name: cls for cls in (RoundRobin, LeastOutstanding, PrefixAffinity)}


def make_router(name: str) -> Router:
    """The router called `name`; UserError listing the known ones otherwise."""
    cls = ROUTERS.get(name)
    if cls is None:
        raise UserError(f"unknown router '{name}'; known routers: {', '.join(ROUTERS)}")
    return cls()


def decode_router(name: str) -> Router:
    """Router over the decode pool of a disaggregated deployment."""
    return RoundRobin() if name == RoundRobin.name else LeastOutstanding()


def build_pools(engine: EngineConfig | None, replicas: int, disagg: DisaggConfig | None, *,
                fast: bool, on_done: Callable[[Sequence], None], on_itl: Callable[[float, int], None],
                on_handoff: Callable[[Sequence, float], None],
                on_iteration: Callable[[IterationRow], None] | None,
                ) -> tuple[list[Replica], list[Replica]]:
    """(replicas receiving arrivals, decode replicas) — the second list is empty without disaggregation."""
    def make(index: int, config: EngineConfig, handoff: bool) -> Replica:
        """A replica; one with pipeline stages (step model pp > 1) is a `PipelineReplica`."""
        if config.step_model.pp > 1:
            return PipelineReplica(index, config, on_done=on_done, on_itl=on_itl,  # type: ignore[return-value]
                                   on_handoff=on_handoff if handoff else None, on_iteration=on_iteration)
        return Replica(index, config, fast=fast, on_done=on_done, on_itl=on_itl,
                       on_handoff=on_handoff if handoff else None, on_iteration=on_iteration)

    if disagg is None:
        if engine is None:
            raise UserError("simulate needs step_model and kv_tokens (or a disaggregated deployment)")
        if replicas < 1:
            raise UserError(f"replicas must be >= 1, got {replicas}")
        return [make(i, engine, False) for i in range(replicas)], []
    if disagg.prefill.block_size != disagg.decode.block_size:
        raise UserError("prefill and decode pools must use the same KV block size")
    x, y = disagg.prefill_replicas, disagg.decode_replicas
    return ([make(i, disagg.prefill, True) for i in range(x)],
            [make(x + j, disagg.decode, False) for j in range(y)])
