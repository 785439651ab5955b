"""Plain configuration of one engine instance and of a disaggregated deployment (library level)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from paretoserve.errors import UserError
from paretoserve.perf.base import StepTimeModel
from paretoserve.perf.memory import KvLayout
from paretoserve.perf.speculative import SpecDecoder


@dataclass(frozen=True)
class EngineConfig:
    """One engine instance (replica): its latency model, KV memory and batching limits.

    Attributes:
        step_model: seconds of each iteration; the only source of time in the simulator.
        kv_tokens: KV-cache capacity of the replica in tokens (rounded down to whole blocks).
        block_size: tokens per KV block.
        policy: scheduling policy name (see `paretoserve.sim.schedulers.POLICIES`).
        max_num_seqs: most sequences running at once.
        max_num_batched_tokens: most tokens computed in one iteration.
        prefix_caching: reuse KV blocks by prefix hash.
        reserve_full_prompt: admit a waiting request only if its whole prompt fits in the free KV
            blocks (vLLM 0.19 `scheduler_reserve_full_isl`, default on).
        watermark: fraction of KV blocks kept free at admission (vLLM V0; 0 in V1).
        policy_options: policy-specific settings (e.g. sarathi `chunk_size`).
        kv_bytes_per_token: KV bytes of one token of context across the replica (swap and transfer).
        swap_bandwidth: host-link bandwidth in bytes/s for swapping KV out and in (PCIe).
        max_model_len: longest prompt + output accepted, in tokens (None: no limit).
        devices: accelerators the replica runs on (tp × pp), for energy and cost.
        kv_layout: how a sequence holds blocks beyond ceil(context / block_size) — sliding-window
            KV and recurrent state (`KvLayout.fixed_blocks`); None: full attention only.
        speculative: speculative decoding (verify width, drafter, acceptance sampling); None: off.
    """

    step_model: StepTimeModel
    kv_tokens: int
    block_size: int = 16
    policy: str = "vllm"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    prefix_caching: bool = True
    reserve_full_prompt: bool = True
    watermark: float = 0.0
    policy_options: Mapping[str, object] = field(default_factory=dict)
    kv_bytes_per_token: float = 0.0
    swap_bandwidth: float = 0.0
    max_model_len: int | None = None
    devices: int = 1
    kv_layout: KvLayout | None = None
    speculative: SpecDecoder | None = None

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise UserError(f"block size must be >= 1 token, got {self.block_size}")
        if self.kv_tokens < self.block_size:
            raise UserError(f"KV capacity of {self.kv_tokens} tokens is less than one block "
                            f"of {self.block_size}")
        if self.max_num_seqs < 1:
            raise UserError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise UserError(f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                            f"max_num_seqs ({self.max_num_seqs}), as vLLM requires")
        if not 0.0 <= self.watermark < 1.0:
            raise UserError(f"watermark must be in [0, 1), got {self.watermark}")

    @property
    def num_blocks(self) -> int:
        """KV blocks of the replica."""
        return self.kv_tokens // self.block_size


@dataclass(frozen=True)
class DisaggConfig:
    """Disaggregated prefill/decode pools (DistServe `xPyD`).

    A request is prefilled on a prefill replica, which computes its first token; its KV
    (prompt tokens × `kv_bytes_per_token` bytes) then crosses the link in
    bytes / `link_bandwidth` + `link_latency` seconds to a decode replica. The first token reaches
    the user when the transfer ends (TTFT includes it); the request then waits for free KV blocks
    on the decode replica like any other request and decodes the rest there. Simplification: the
    prefill replica frees the request's blocks when the transfer starts.

    Attributes:
        prefill_replicas: number of prefill replicas (x).
        decode_replicas: number of decode replicas (y).
        prefill: engine of each prefill replica.
        decode: engine of each decode replica.
        kv_bytes_per_token: KV bytes per prompt token moved from prefill to decode.
        link_bandwidth: bytes/s of the prefill-to-decode link.
        link_latency: fixed seconds per transfer.
    """

    prefill_replicas: int
    decode_replicas: int
    prefill: EngineConfig
    decode: EngineConfig
    kv_bytes_per_token: float
    link_bandwidth: float
    link_latency: float = 0.0

    def __post_init__(self) -> None:
        if self.prefill_replicas < 1 or self.decode_replicas < 1:
            raise UserError(f"disaggregation needs >= 1 prefill and >= 1 decode replica, got "
                            f"{self.prefill_replicas}P{self.decode_replicas}D")
        if self.link_bandwidth <= 0:
            raise UserError(f"KV transfer link bandwidth must be > 0 bytes/s, got {self.link_bandwidth}")

    def transfer_seconds(self, prompt_tokens: int) -> float:
        """Seconds to move the KV of `prompt_tokens` tokens from a prefill to a decode replica."""
        return prompt_tokens * self.kv_bytes_per_token / self.link_bandwidth + self.link_latency
