"""`trtllm`: TensorRT-LLM's default scheduler (capacity policy `GUARANTEED_NO_EVICT`, FCFS).

Sources: TensorRT-LLM docs "useful runtime flags", `tensorrt_llm/llmapi/llm_args.py`
(`SchedulerConfig`, `KvCacheConfig`, `BaseLlmArgs`); `../shared/reference/engine_facts.md` §5.

- A waiting request is admitted only when KV blocks for its whole length (prompt + max new tokens)
  can be reserved next to the reservations of the running requests, so a started request is never
  paused: the policy never preempts.
- Each iteration: one token per generating request, then context (prompt) requests in arrival order
  under `max_num_tokens` (the engine's `max_num_batched_tokens`) and `max_batch_size`
  (`max_num_seqs`). Without chunked context (`chunked_prefill` 0, TRT-LLM's and the AIC generator's
  default) a prompt is computed whole in one iteration; with it, prompts are chunked like vLLM's.
- KV blocks of 32 tokens (`tokens_per_block`).

The request's output length stands for its max new tokens; its last token's KV is never written,
so a request reserves the blocks of prompt + output − 1 tokens (what it can ever hold), plus the
blocks of its sliding-window KV and recurrent state where the model has them (`KvLayout.fixed_blocks`,
the block manager's own accounting).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from paretoserve.sim.schedulers.base import Scheduler
from paretoserve.sim.sequence import Sequence

if TYPE_CHECKING:
    from paretoserve.perf.memory import KvLayout
    from paretoserve.sim.config import EngineConfig
    from paretoserve.sim.replica import Replica


class TrtllmScheduler(Scheduler):
    """FCFS admission against reserved KV for the full length; no preemption."""

    name = "trtllm"
    options = {"chunked_prefill": 0.0}
    block_size = 32

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        self.whole_prompts = not bool(self.settings["chunked_prefill"])
        self.capacity = config.num_blocks

    @staticmethod
    def reserved_blocks(seq: Sequence, block_size: int, layout: KvLayout | None = None) -> int:
        """KV blocks `seq` holds by the end of its output (with `layout`: also its sliding-window
        and recurrent-state blocks)."""
        context = seq.prompt + seq.output - 1
        fixed = layout.fixed_blocks(context) if layout is not None else 0
        return (context + block_size - 1) // block_size + fixed

    def admit(self, replica: Replica, budget: int) -> int:
        bs, layout = replica.bs, replica.layout
        reserved = sum(self.reserved_blocks(s, bs, layout) for s in replica.running)
        queue = self.waiting
        while queue and budget > 0 and len(replica.running) < replica.max_seqs:
            seq = queue[0]
            need = self.reserved_blocks(seq, bs, layout)
            if reserved + need > self.capacity:
                break
            tokens = replica.try_admit(seq, budget)
            if not tokens:
                break
            queue.popleft()
            budget -= tokens
            reserved += need
        return budget

    def victim(self, replica: Replica) -> Sequence:
        """Never reached: reservations cover every running request to its last token."""
        raise RuntimeError(f"trtllm replica {replica.index} ran out of KV blocks although every "
                           f"admitted request had its full length reserved")
