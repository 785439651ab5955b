"""Device memory: weights, runtime reserve, and how much KV cache fits (DESIGN §4).

KV capacity of one replica: each device's gpu_memory_utilization × memory − weights per device −
runtime reserve, cut into KV blocks as vLLM's hybrid KV cache manager does (`KvLayout`: sliding-window
layers capped at the window, Mamba state per sequence). Weights are priced per module kind in its
stored dtype (`ModelSpec.dtypes`: unquantized attention, router, embedding and LM head stay 16-bit).
The runtime reserve (activations of the largest batch, CUDA graphs, NCCL buffers, allocator
slack) is estimated as 0.75 GiB plus the activations of `max_num_batched_tokens` tokens; on the
real vLLM 0.19 RTX 4090 run in shared/data this gives a KV size within ~2% of what vLLM reported
(2,588 blocks). It is an estimate and calibration may override it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from paretoserve.catalog.device import DeviceSpec
from paretoserve.catalog.dtypes import dtype_bytes, normalize_dtype
from paretoserve.catalog.model import ModelSpec
from paretoserve.errors import UserError
from paretoserve.perf.layout import ParallelLayout

GIB = 1024**3
RUNTIME_FIXED_BYTES = 0.75 * GIB
#: vLLM's default CUDA KV block size, in tokens.
DEFAULT_BLOCK_SIZE = 16
#: Recurrent (Mamba conv + SSM) state dtype: fp32, as vLLM keeps the SSM state.
STATE_DTYPE = "fp32"


@dataclass(frozen=True, slots=True)
class KvLayout:
    """How one sequence's cache occupies a device, as vLLM's hybrid KV cache manager allocates it
    (engine_facts §3): one pool of uniform blocks; full-attention (and MLA) layers keep every token,
    sliding-window layers only the blocks covering the last `window` tokens, Mamba layers a constant
    state per sequence.

    The pool is counted in blocks of `block_size` tokens of the growing layers (`block_bytes` bytes
    per device). A sequence of context c holds ceil(c / block_size) of them plus `fixed_blocks(c)`:
    its sliding-window blocks and its recurrent state, rounded up to whole blocks.

    Attributes:
        block_size: tokens per block.
        growing_bytes_per_token: bytes per token of context, per device, of the layers that keep
            every token (sliding-window layers too when the model has no other attention).
        window_bytes_per_token: bytes per token, per device, of the sliding-window layers.
        window_blocks: blocks a sliding-window layer holds at most: ceil((window − 1) / block) + 1.
        state_bytes: recurrent-state bytes per sequence, per device.
    """

    block_size: int
    growing_bytes_per_token: float
    window_bytes_per_token: float = 0.0
    window_blocks: int = 0
    state_bytes: float = 0.0

    @property
    def block_bytes(self) -> float:
        """Bytes per device of one pool block."""
        return self.block_size * self.growing_bytes_per_token

    def fixed_blocks(self, context: int) -> int:
        """Pool blocks a sequence whose context reaches `context` tokens holds beyond its
        ceil(context / block_size) growing blocks: sliding-window KV (capped) and recurrent state."""
        if not (self.window_bytes_per_token or self.state_bytes):
            return 0
        window = min(-(-context // self.block_size), self.window_blocks)
        extra = window * self.block_size * self.window_bytes_per_token + self.state_bytes
        return math.ceil(extra / self.block_bytes - 1e-9)

    def sequence_blocks(self, context: int) -> int:
        """Pool blocks one sequence of `context` tokens holds (the accounting shared by
        `KvCapacity.max_sequences` and the simulator's block manager)."""
        return -(-context // self.block_size) + self.fixed_blocks(context)


@dataclass(frozen=True, slots=True)
class KvCapacity:
    """KV-cache capacity of one replica.

    Attributes:
        blocks: pool blocks per device (every device of the replica holds the same number).
        layout: how sequences occupy those blocks.
        bytes: KV-cache bytes across the replica's devices.
        bytes_per_token: KV bytes one token of context takes across the replica (growing and
            sliding-window layers, uncapped: what a prompt's KV transfer or swap moves).
        weight_bytes_per_device: weights held by each device.
        reserve_bytes_per_device: runtime reserve per device.
        devices: devices in the replica (tp × pp).
    """

    blocks: int
    layout: KvLayout
    bytes: float
    bytes_per_token: float
    weight_bytes_per_device: float
    reserve_bytes_per_device: float
    devices: int

    @property
    def tokens(self) -> int:
        """Tokens of growing-layer KV the pool holds (blocks × block size)."""
        return self.blocks * self.layout.block_size

    def max_sequences(self, context: int) -> int:
        """Sequences of `context` tokens that fit at once."""
        return self.blocks // self.layout.sequence_blocks(max(1, context))


def weight_bytes(model: ModelSpec, weight_dtype: str | None = None) -> float:
    """Bytes of all weights, each module kind in its dtype (`ModelSpec.dtypes`; `weight_dtype`
    overrides the quantizable modules). Norms stay in the unquantized dtype of the embedding."""
    dtypes = model.dtypes(normalize_dtype(weight_dtype) if weight_dtype else None)
    return sum(count * dtype_bytes(dtypes.of("embedding" if kind == "norm" else kind))
               for kind, count in model.params_by_module.items())


def runtime_reserve_bytes(model: ModelSpec, tp: int, max_num_batched_tokens: int,
                          max_num_seqs: int) -> float:
    """Estimated non-weight, non-KV memory per device in bytes (see module docstring)."""
    widest = max([layer.mlp.matrices * max(layer.mlp.intermediate, layer.mlp.expert_intermediate)
                  for layer in model.layers] + [model.hidden_size])
    activations = max_num_batched_tokens * (widest + 4 * model.hidden_size) * 2.0 / tp
    logits = min(max_num_batched_tokens, max_num_seqs) * model.vocab_size * 4.0 / tp
    return RUNTIME_FIXED_BYTES + activations + logits


def kv_layout(model: ModelSpec, tp: int, pp: int, kv_dtype: str | None,
              block_size: int = DEFAULT_BLOCK_SIZE) -> KvLayout:
    """Per-device cache layout of `model` on a tp × pp replica (see `KvLayout`).

    GQA heads shard across TP ranks up to the number of KV heads (beyond that they are replicated);
    the MLA latent is replicated on every TP rank; Mamba state shards with its heads; layers split
    evenly across PP stages. Sliding-window layers of different windows are all capped at the
    largest. UserError for a model without attention layers (nothing grows).
    """
    kvb = dtype_bytes(kv_dtype or "bf16")
    growing = window = state = 0.0
    windows = set()
    for layer, count in model.layer_groups:
        att = layer.attention
        shard = min(tp, att.num_kv_heads) if att.kind == "gqa" and att.num_kv_heads else 1
        per_token = count * att.kv_values_per_token() / shard * kvb / pp
        if att.window is None:
            growing += per_token
        else:
            window += per_token
            windows.add(att.window)
        state += count * att.state_values_per_sequence() / (tp if att.kind == "mamba" else 1) \
            * dtype_bytes(STATE_DTYPE) / pp
    if not growing:
        growing, window = window, 0.0  # only sliding-window layers: count them uncapped
    if not growing:
        raise UserError(f"{model.name} has no attention layers; KV capacity needs at least one")
    span = max(windows) if window else 0
    return KvLayout(block_size=block_size, growing_bytes_per_token=growing, window_bytes_per_token=window,
                    window_blocks=-(-(span - 1) // block_size) + 1 if window else 0, state_bytes=state)


def expert_weight_bytes(model: ModelSpec, weight_dtype: str | None = None) -> float:
    """Bytes of the routed experts' weights (all MoE layers) in their dtype (`ModelSpec.dtypes`;
    `weight_dtype` overrides the quantizable modules)."""
    dtypes = model.dtypes(normalize_dtype(weight_dtype) if weight_dtype else None)
    return model.params_by_module.get("experts", 0) * dtype_bytes(dtypes.of("experts"))


def weight_bytes_per_device(model: ModelSpec, weight_dtype: str | None, layout: ParallelLayout) -> float:
    """Weights one GPU holds: the dense part split over tp × pp, the routed experts over
    moe_tp × ep × pp (with EPLB's redundant slots: × (E + r) / E)."""
    experts = expert_weight_bytes(model, weight_dtype)
    dense = weight_bytes(model, weight_dtype) - experts
    moe = [layer.mlp.num_experts for layer in model.layers if layer.mlp.kind == "moe"]
    slots = (moe[0] + layout.routing.redundant_experts) / moe[0] if moe else 1.0
    return dense / (layout.tp * layout.pp) + experts * slots / (layout.moe_tp_ways * layout.ep * layout.pp)


def kv_capacity(model: ModelSpec, device: DeviceSpec, *, tp: int = 1, pp: int = 1,
                gpu_memory_utilization: float = 0.9, weight_dtype: str | None = None,
                kv_dtype: str | None = None, max_num_batched_tokens: int = 8192,
                max_num_seqs: int = 256, block_size: int = DEFAULT_BLOCK_SIZE,
                layout: ParallelLayout | None = None) -> KvCapacity:
    """KV blocks that fit in one replica (one attention-DP rank of `layout`: its tp × pp GPUs hold
    its own KV cache); UserError when the weights leave no room."""
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise UserError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    layout = layout or ParallelLayout(tp=tp, pp=pp)
    tp, pp = layout.tp, layout.pp
    devices = tp * pp
    weights = weight_bytes_per_device(model, weight_dtype, layout)
    reserve = runtime_reserve_bytes(model, tp, max_num_batched_tokens, max_num_seqs)
    usable = gpu_memory_utilization * device.mem_capacity
    free = usable - weights - reserve
    cache = kv_layout(model, tp, pp, kv_dtype, block_size)
    blocks = int(free // cache.block_bytes) if free > 0 else 0
    if blocks < cache.sequence_blocks(block_size):
        need = (weights + reserve) / gpu_memory_utilization / 1e9
        raise UserError(
            f"{model.name} does not fit on {devices}× {device.name}: weights {weights / 1e9:.1f} GB + "
            f"runtime {reserve / 1e9:.1f} GB per device exceed {usable / 1e9:.1f} GB usable "
            f"({gpu_memory_utilization:.0%} of {device.mem_capacity / 1e9:.0f} GB); need about "
            f"{need:.0f} GB per device — use more devices (--tp/--pp) or a smaller weight dtype")
    per_token = cache.growing_bytes_per_token + cache.window_bytes_per_token
    return KvCapacity(blocks=blocks, layout=cache, bytes=free * devices, bytes_per_token=per_token * devices,
                      weight_bytes_per_device=weights, reserve_bytes_per_device=reserve, devices=devices)
