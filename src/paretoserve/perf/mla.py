"""FLOPs and bytes of one MLA (multi-head latent attention) layer as vLLM and SGLang run it.

engine_facts §3 "MLA execution path" (vllm `vllm/v1/attention/backends/mla/common.py`):

- prefill chunks run *decompressed*: the cached latent of every key they attend to is up-projected
  by W_UK / W_UV (`kv_b_proj`) into per-head K (no-rope part) and V, then ordinary MHA runs with
  QK head dim `head_dim + rope_dim` (192 for DeepSeek-V3) and V head dim `v_head_dim` (128):
  2 × heads × (qk + v) FLOPs per (query, key) pair;
- decodes run *absorbed*: W_UK is folded into the query and W_UV applied after attention, so MQA
  runs over the latent cache itself, `kv_lora_rank + rope_dim` values per token (576):
  2 × heads × (2 × kv_lora + rope) FLOPs per (query, key) pair, and the latent read once per token.

Projections (vllm `DeepseekV2MLAAttention`): the fused q_a / kv_a down-projections are replicated
on every TP rank; q_b, kv_b and o_proj are split across TP ranks by heads. The latent KV cache is
replicated on every TP rank. Rotary embedding and the two small RMSNorms are left out.

Every cost is linear in a few aggregates of the step (names below); `mla_ops` returns the
operators of one layer on one device, used by the roofline and by the MLA kernel-table fit.

Aggregates: "tokens" (tokens through the projections), "pf_tokens" (prompt tokens computed),
"pf_kv" (keys the prefill chunks attend to, cached prefix + chunk), "pf_pairs" (causal (query, key)
pairs of the prefill chunks), "decodes" (decoding sequences), "dec_kv" (KV tokens the decodes read).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from paretoserve.catalog.model import AttentionSpec

OpKind = Literal["gemm", "attention"]
#: Phases of the MLA module tables and fits: prefill chunks ("context") and decodes ("generation").
MLA_PHASES = ("context", "generation")
#: The phase whose constants time each phase-specific operator (the projections run in both).
OP_PHASE = {"attn.mla_kv_up": "context", "attn.prefill": "context", "attn.mla_absorb": "generation",
            "attn.decode": "generation"}


@dataclass(frozen=True, slots=True)
class MlaConstants:
    """Fitted MLA efficiencies of one phase (`paretoserve.calibrate.mla_fit`), stored in profiles:
    an operator takes fixed_s + max(FLOPs / (peak × e), bytes / (bandwidth × memory)) with e =
    `gemm` (bf16 weights) or `gemm_fp8` (fp8 weights) for weight GEMMs, `attention` for the
    attention kernels (fractions of the datasheet peaks; fixed_s in seconds per operator)."""

    gemm: float
    gemm_fp8: float
    attention: float
    memory: float
    fixed_s: float

    def to_dict(self) -> dict[str, float]:
        """Plain dict (profile file)."""
        return {"gemm": self.gemm, "gemm_fp8": self.gemm_fp8, "attention": self.attention,
                "memory": self.memory, "fixed_s": self.fixed_s}


@dataclass(frozen=True, slots=True)
class MlaOp:
    """One operator of an MLA layer on one device: FLOPs and bytes linear in the aggregates.

    Attributes:
        name: operator name.
        kind: "gemm" (weight GEMM, at the GEMM peak) or "attention" (bf16 attention peak).
        flops: FLOPs per unit of each aggregate.
        weight_bytes: bytes read once per step when the operator runs (weights).
        bytes: bytes per unit of each aggregate (activations, KV).
    """

    name: str
    kind: OpKind
    flops: dict[str, float]
    weight_bytes: float
    bytes: dict[str, float]


def mla_ops(att: AttentionSpec, hidden: int, tp: int, *, weight_bytes: float, kv_bytes: float,
            act_bytes: float) -> list[MlaOp]:
    """Operators of one MLA layer on one of `tp` ranks (bytes per value: weights, KV cache,
    activations)."""
    heads = att.num_heads / tp
    nope, rope, v, lora = att.head_dim, att.rope_dim, att.v_head_dim, att.kv_lora_rank
    qk = nope + rope
    latent = lora + rope
    wb, kb, ab = weight_bytes, kv_bytes, act_bytes
    q_in = att.q_lora_rank or hidden
    a_out = att.q_lora_rank + latent              # fused q_a + kv_a output (replicated)
    kv_b = lora * heads * (nope + v)              # W_UK and W_UV of this rank's heads
    ops = [
        MlaOp("attn.mla_qkv_a", "gemm", {"tokens": 2.0 * hidden * a_out}, hidden * a_out * wb,
              {"tokens": (hidden + a_out) * ab}),
        MlaOp("attn.mla_q_b", "gemm", {"tokens": 2.0 * q_in * heads * qk}, q_in * heads * qk * wb,
              {"tokens": (q_in + heads * qk) * ab}),
        # Prefill: up-project the latent of every key the chunks attend to.
        MlaOp("attn.mla_kv_up", "gemm", {"pf_kv": 2.0 * kv_b}, kv_b * wb,
              {"pf_kv": lora * kb + heads * (nope + v) * ab}),
        MlaOp("attn.prefill", "attention", {"pf_pairs": prefill_pair_flops(att, tp)}, 0.0,
              {"pf_kv": heads * (qk + v) * ab, "pf_tokens": heads * (qk + v) * ab + latent * kb}),
        # Decode: absorb W_UK into the query and apply W_UV to the latent output.
        MlaOp("attn.mla_absorb", "gemm", {"decodes": 2.0 * kv_b}, kv_b * wb,
              {"decodes": heads * (nope + 2 * lora + v) * ab}),
        MlaOp("attn.decode", "attention", {"dec_kv": decode_pair_flops(att, tp)}, 0.0,
              {"dec_kv": latent * kb, "decodes": heads * (latent + lora) * ab + latent * kb}),
        MlaOp("attn.o_proj", "gemm", {"tokens": 2.0 * heads * v * hidden}, heads * v * hidden * wb,
              {"tokens": (heads * v + hidden) * ab}),
    ]
    return ops


def prefill_pair_flops(att: AttentionSpec, tp: int) -> float:
    """FLOPs of one prefill (query, key) pair on one rank: QKᵀ over qk dims plus PV over v dims."""
    return 2.0 * att.num_heads / tp * (att.head_dim + att.rope_dim + att.v_head_dim)


def decode_pair_flops(att: AttentionSpec, tp: int) -> float:
    """FLOPs of one absorbed decode (query, key) pair on one rank: scores over the latent + rope,
    output over the latent."""
    return 2.0 * att.num_heads / tp * (2 * att.kv_lora_rank + att.rope_dim)
