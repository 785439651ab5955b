"""The parallel layout of one engine instance: attention TP × attention-DP, MoE-TP × EP, PP.

One engine instance (vLLM: one `vllm serve` with `--tensor-parallel-size tp --data-parallel-size
attention_dp [--enable-expert-parallel]`) runs on tp × attention_dp × pp GPUs:

- attention (and every dense layer, shared experts included) is tensor-parallel over `tp` GPUs and
  data-parallel over `attention_dp` ranks: each rank has its own scheduler, batch and KV cache;
- the routed experts of each MoE layer are split over the tp × attention_dp GPUs of a stage as
  `moe_tp` tensor-parallel ways × `ep` expert-parallel ways (moe_tp × ep = tp × attention_dp), and
  every MoE layer sees the tokens of all attention-DP ranks;
- layers split into `pp` pipeline stages.

`routing` describes how tokens are spread over the EP ranks (`paretoserve.perf.routing`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paretoserve.catalog.model import ModelSpec
from paretoserve.errors import UserError
from paretoserve.perf.routing import Routing


@dataclass(frozen=True, slots=True)
class ParallelLayout:
    """Parallel layout of one engine instance (module docstring).

    Attributes:
        tp: attention tensor-parallel GPUs per attention-DP rank.
        pp: pipeline stages.
        attention_dp: attention data-parallel ranks.
        moe_tp: tensor-parallel ways of the routed experts (None: tp × attention_dp ÷ ep).
        ep: expert-parallel ways.
        routing: routing imbalance and EPLB options.
    """

    tp: int = 1
    pp: int = 1
    attention_dp: int = 1
    moe_tp: int | None = None
    ep: int = 1
    routing: Routing = field(default_factory=Routing)

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "attention_dp", "ep"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}", field=name)
        group = self.tp * self.attention_dp
        if self.moe_tp is None:
            if group % self.ep:
                raise UserError(f"--ep {self.ep} does not divide attention TP × DP = {group} GPUs",
                                field="ep")
            object.__setattr__(self, "moe_tp", group // self.ep)
        elif self.moe_tp < 1 or self.moe_tp * self.ep != group:
            raise UserError(f"MoE TP {self.moe_tp} × EP {self.ep} must equal attention TP {self.tp} × "
                            f"DP {self.attention_dp} = {group} GPUs", field="moe_tp")

    @property
    def moe_tp_ways(self) -> int:
        """`moe_tp` as an int (always set after construction)."""
        assert self.moe_tp is not None
        return self.moe_tp

    @property
    def rank_devices(self) -> int:
        """GPUs of one attention-DP rank (tp × pp): what holds its KV cache and runs its batch."""
        return self.tp * self.pp

    @property
    def devices(self) -> int:
        """GPUs of the whole engine instance (tp × attention_dp × pp)."""
        return self.tp * self.attention_dp * self.pp

    def check(self, model: ModelSpec) -> None:
        """UserError unless this layout can run `model` (heads divisible by TP, experts by EP)."""
        check_parallelism(model, self.tp, self.pp)
        moe = [layer.mlp for layer in model.layers if layer.mlp.kind == "moe"]
        if not moe and self.ep > 1:
            raise UserError(f"--ep {self.ep} needs a mixture-of-experts model; {model.name} is dense",
                            field="ep")
        for mlp in moe:
            slots = mlp.num_experts + self.routing.redundant_experts
            if slots % self.ep:
                extra = self.routing.redundant_experts
                plus = f" + {extra} redundant" if extra else ""
                raise UserError(f"--ep {self.ep} does not divide {model.name}'s {mlp.num_experts} experts{plus}",
                                field="ep")


def check_parallelism(model: ModelSpec, tp: int, pp: int) -> None:
    """UserError unless `tp` divides every layer's heads and `pp` ≤ layers."""
    if tp < 1 or pp < 1:
        raise UserError(f"tp and pp must be >= 1, got tp={tp} pp={pp}")
    for layer in model.layers:
        att = layer.attention
        heads = att.num_heads if att.kind in ("gqa", "mla") else att.mamba_heads
        if heads and heads % tp:
            valid = [d for d in range(1, heads + 1) if heads % d == 0 and d <= 64]
            raise UserError(f"--tp {tp} does not divide {model.name}'s {heads} attention heads; "
                            f"valid TP sizes: {', '.join(map(str, valid))}")
        if att.kind == "gqa" and att.num_kv_heads and tp > att.num_kv_heads and tp % att.num_kv_heads:
            raise UserError(f"--tp {tp} is neither a divisor nor a multiple of {model.name}'s "
                            f"{att.num_kv_heads} KV heads")
    if pp > model.num_layers:
        raise UserError(f"--pp {pp} exceeds {model.name}'s {model.num_layers} layers")
