"""Device memory: weights, runtime reserve, and how much KV cache fits (DESIGN §4).

KV capacity of one replica = tp × pp × (gpu_memory_utilization × device memory − weights per
device − runtime reserve per device) converted to tokens with the model's KV bytes per token.
The runtime reserve (activations of the largest batch, CUDA graphs, NCCL buffers, allocator
slack) is estimated as 0.75 GiB plus the activations of `max_num_batched_tokens` tokens; on the
real vLLM 0.19 RTX 4090 run in shared/data this gives a KV size within ~2% of what vLLM reported
(2,588 blocks). It is an estimate and calibration may override it.
"""

from __future__ import annotations

from dataclasses import dataclass

from paretoserve.catalog.device import DeviceSpec
from paretoserve.catalog.dtypes import dtype_bytes, normalize_dtype
from paretoserve.catalog.model import ModelSpec
from paretoserve.errors import UserError
from paretoserve.perf.layout import ParallelLayout

GIB = 1024**3
RUNTIME_FIXED_BYTES = 0.75 * GIB


@dataclass(frozen=True, slots=True)
class KvCapacity:
    """KV-cache capacity of one replica.

    Attributes:
        tokens: KV tokens (context) that fit across the replica, full-attention accounting.
        bytes: KV-cache bytes across the replica's devices.
        bytes_per_token: KV bytes one token of context takes across the replica.
        weight_bytes_per_device: weights held by each device.
        reserve_bytes_per_device: runtime reserve per device.
        devices: devices in the replica (tp × pp).
    """

    tokens: int
    bytes: float
    bytes_per_token: float
    weight_bytes_per_device: float
    reserve_bytes_per_device: float
    devices: int

    def max_sequences(self, context: int) -> int:
        """Sequences of `context` tokens that fit at once (ignoring window caps)."""
        return self.tokens // max(1, context)


def weight_bytes(model: ModelSpec, weight_dtype: str | None = None) -> float:
    """Bytes of all weights in `weight_dtype` (default: the model's native dtype).

    Embedding and LM head stay in bf16 when the rest is quantized (as vLLM and gpt-oss do).
    """
    dtype = normalize_dtype(weight_dtype or model.weight_dtype)
    p = model.params
    tables = p.embedding + p.lm_head
    return (p.total - tables) * dtype_bytes(dtype) + tables * dtype_bytes("bf16")


def runtime_reserve_bytes(model: ModelSpec, tp: int, max_num_batched_tokens: int,
                          max_num_seqs: int) -> float:
    """Estimated non-weight, non-KV memory per device in bytes (see module docstring)."""
    widest = max([layer.mlp.matrices * max(layer.mlp.intermediate, layer.mlp.expert_intermediate)
                  for layer in model.layers] + [model.hidden_size])
    activations = max_num_batched_tokens * (widest + 4 * model.hidden_size) * 2.0 / tp
    logits = min(max_num_batched_tokens, max_num_seqs) * model.vocab_size * 4.0 / tp
    return RUNTIME_FIXED_BYTES + activations + logits


def kv_bytes_per_token_per_device(model: ModelSpec, tp: int, pp: int, kv_dtype: str | None) -> float:
    """KV bytes one token of context takes on each device of a tp × pp replica.

    GQA heads shard across TP ranks up to the number of KV heads (beyond that they are replicated);
    the MLA latent is replicated on every TP rank; layers split evenly across PP stages.
    """
    values = 0.0
    for layer, count in model.layer_groups:
        att = layer.attention
        shard = min(tp, att.num_kv_heads) if att.kind == "gqa" and att.num_kv_heads else 1
        values += count * att.kv_values_per_token() / shard
    return values * dtype_bytes(kv_dtype or "bf16") / pp


def expert_weight_bytes(model: ModelSpec, weight_dtype: str | None = None) -> float:
    """Bytes of the routed experts' weights (all MoE layers) in `weight_dtype`."""
    dtype = normalize_dtype(weight_dtype or model.weight_dtype)
    params = sum(count * layer.mlp.num_experts * layer.mlp.expert_params(model.hidden_size)
                 for layer, count in model.layer_groups if layer.mlp.kind == "moe")
    return params * dtype_bytes(dtype)


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
                max_num_seqs: int = 256, layout: ParallelLayout | None = None) -> KvCapacity:
    """KV tokens that fit in one replica (one attention-DP rank of `layout`: its tp × pp GPUs hold
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
    per_token = kv_bytes_per_token_per_device(model, tp, pp, kv_dtype)
    if free <= 0 or (per_token and free < per_token * 16):
        need = (weights + reserve) / gpu_memory_utilization / 1e9
        raise UserError(
            f"{model.name} does not fit on {devices}× {device.name}: weights {weights / 1e9:.1f} GB + "
            f"runtime {reserve / 1e9:.1f} GB per device exceed {usable / 1e9:.1f} GB usable "
            f"({gpu_memory_utilization:.0%} of {device.mem_capacity / 1e9:.0f} GB); need about "
            f"{need:.0f} GB per device — use more devices (--tp/--pp) or a smaller weight dtype")
    tokens = int(free // per_token) if per_token else 10**12
    return KvCapacity(tokens=tokens, bytes=free * devices, bytes_per_token=per_token * devices,
                      weight_bytes_per_device=weights, reserve_bytes_per_device=reserve,
                      devices=devices)
