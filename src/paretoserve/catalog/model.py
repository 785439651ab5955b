"""`ModelSpec`: a transformer's architecture, parsed from a Hugging Face `config.json`.

Facts only: layer shapes, attention kind, MoE routing, dtype. The per-layer description is general
enough for dense GQA (Llama, Qwen), MoE with top-k and shared experts (Mixtral, Qwen3-MoE, gpt-oss,
Llama 4, DeepSeek-V3, Kimi-K2, Gemma 4), MLA attention (DeepSeek-V3, Kimi-K2), sliding-window layers
(gpt-oss, Gemma) and hybrid Mamba-2 / attention stacks (Nemotron-H).
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from paretoserve.catalog.dtypes import dtype_bytes
from paretoserve.errors import UserError
from paretoserve.textfiles import read_json

AttentionKind = Literal["gqa", "mla", "mamba", "none"]
MlpKind = Literal["dense", "moe", "none"]


@dataclass(frozen=True, slots=True)
class AttentionSpec:
    """The token-mixing part of one layer.

    For "gqa": `num_heads` query heads and `num_kv_heads` key/value heads of `head_dim`
    (`v_head_dim` for values); `window` tokens for sliding-window layers (None = full);
    `kv_shared` when values reuse the keys (one tensor cached instead of two).
    For "mla" (DeepSeek multi-head latent attention): `q_lora_rank` (0 = no query compression),
    `kv_lora_rank` latent width and `rope_dim` decoupled rotary width — the KV cache holds
    `kv_lora_rank + rope_dim` values per token; `head_dim` is the no-rope query/key width.
    For "mamba" (Mamba-2): `mamba_heads` × `mamba_head_dim` inner width, `ssm_state` state size per
    head channel, `ssm_groups` B/C groups, `conv_kernel` width — a constant-size state per sequence.
    """

    kind: AttentionKind
    num_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    v_head_dim: int = 0
    window: int | None = None
    kv_shared: bool = False
    bias: bool = False
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    rope_dim: int = 0
    mamba_heads: int = 0
    mamba_head_dim: int = 0
    ssm_state: int = 0
    ssm_groups: int = 0
    conv_kernel: int = 0

    @property
    def q_dim(self) -> int:
        """Width of the concatenated query heads (for MLA: no-rope + rope parts)."""
        if self.kind == "mla":
            return self.num_heads * (self.head_dim + self.rope_dim)
        return self.num_heads * self.head_dim

    @property
    def o_in_dim(self) -> int:
        """Input width of the output projection (concatenated value heads)."""
        return self.num_heads * self.v_head_dim

    @property
    def mamba_inner(self) -> int:
        """Mamba-2 inner width (heads × head dim)."""
        return self.mamba_heads * self.mamba_head_dim

    def params(self, hidden: int) -> int:
        """Weights of this layer's token mixer (projections, norms, biases), in parameters."""
        if self.kind == "gqa":
            kv_width = self.num_kv_heads * self.head_dim
            v_width = 0 if self.kv_shared else self.num_kv_heads * self.v_head_dim
            proj = hidden * (self.q_dim + kv_width + v_width) + self.o_in_dim * hidden
            bias = (self.q_dim + kv_width + v_width + hidden) if self.bias else 0
            return proj + bias
        if self.kind == "mla":
            qk_head = self.head_dim + self.rope_dim
            if self.q_lora_rank:
                q = hidden * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * self.num_heads * qk_head
            else:
                q = hidden * self.num_heads * qk_head
            kv_a = hidden * (self.kv_lora_rank + self.rope_dim) + self.kv_lora_rank
            kv_b = self.kv_lora_rank * self.num_heads * (self.head_dim + self.v_head_dim)
            return q + kv_a + kv_b + self.o_in_dim * hidden
        if self.kind == "mamba":
            inner, bc = self.mamba_inner, 2 * self.ssm_groups * self.ssm_state
            in_proj = hidden * (2 * inner + bc + self.mamba_heads)
            conv = (inner + bc) * (self.conv_kernel + 1)
            return in_proj + conv + 3 * self.mamba_heads + inner + inner * hidden
        return 0

    def kv_values_per_token(self) -> int:
        """Values cached per token of context (0 for Mamba, whose state does not grow)."""
        if self.kind == "gqa":
            return self.num_kv_heads * (self.head_dim + (0 if self.kv_shared else self.v_head_dim))
        if self.kind == "mla":
            return self.kv_lora_rank + self.rope_dim
        return 0

    def state_values_per_sequence(self) -> int:
        """Values of constant-size recurrent state per sequence (Mamba conv + SSM state)."""
        if self.kind != "mamba":
            return 0
        conv = (self.mamba_inner + 2 * self.ssm_groups * self.ssm_state) * (self.conv_kernel - 1)
        return conv + self.mamba_heads * self.mamba_head_dim * self.ssm_state


@dataclass(frozen=True, slots=True)
class MlpSpec:
    """The channel-mixing part of one layer.

    `intermediate` is the dense FFN width (or, for MoE, the always-on shared-expert width in total);
    `gated` means three matrices (gate, up, down) instead of two. For MoE: `num_experts` routed
    experts of width `expert_intermediate`, `top_k` of them per token.
    """

    kind: MlpKind
    intermediate: int = 0
    gated: bool = True
    num_experts: int = 0
    top_k: int = 0
    expert_intermediate: int = 0
    bias: bool = False

    @property
    def matrices(self) -> int:
        """Weight matrices per FFN (3 when gated, else 2)."""
        return 3 if self.gated else 2

    def dense_params(self, hidden: int) -> int:
        """Parameters of the always-active FFN (dense MLP or shared experts)."""
        bias = (self.matrices - 1) * self.intermediate + hidden if self.bias and self.intermediate else 0
        return self.matrices * hidden * self.intermediate + bias

    def expert_params(self, hidden: int) -> int:
        """Parameters of one routed expert."""
        bias = (self.matrices - 1) * self.expert_intermediate + hidden if self.bias else 0
        return self.matrices * hidden * self.expert_intermediate + bias

    def router_params(self, hidden: int) -> int:
        """Parameters of the router (gate) projection."""
        return hidden * self.num_experts + (self.num_experts if self.bias else 0)


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """One decoder layer: a token mixer and a channel mixer, with their norms."""

    attention: AttentionSpec
    mlp: MlpSpec
    norms: int = 2

    def params(self, hidden: int) -> tuple[int, int]:
        """(total, active per token) parameters of this layer."""
        common = self.attention.params(hidden) + self.norms * hidden + self.mlp.dense_params(hidden)
        if self.mlp.kind != "moe":
            return common, common
        router = self.mlp.router_params(hidden)
        expert = self.mlp.expert_params(hidden)
        return (common + router + self.mlp.num_experts * expert,
                common + router + self.mlp.top_k * expert)


@dataclass(frozen=True, slots=True)
class ParamCount:
    """Parameter counts in parameters (not bytes).

    `embedding` is the input token table, `lm_head` the output projection (0 when tied to the
    embedding). `active` counts what one token touches: attention, dense/shared FFN, the top-k
    routed experts, norms, the embedding row table and the LM head — the convention of Mistral,
    Qwen and DeepSeek model cards. OpenAI's gpt-oss card leaves the input embedding out of its
    active count: that figure is `active - embedding`.
    """

    total: int
    active: int
    embedding: int
    lm_head: int


#: Module kinds that carry their own weight dtype: token mixers (attention, MLA and Mamba
#: projections), dense FFNs and shared experts, routed experts, the MoE router, the input embedding
#: and the LM head.
ModuleKind = Literal["attention", "mlp", "experts", "router", "embedding", "lm_head"]
_QUANTIZABLE: tuple[ModuleKind, ...] = ("attention", "mlp", "experts")


@dataclass(frozen=True, slots=True)
class ModuleDtypes:
    """Stored weight dtype of each module kind of a checkpoint.

    A quantized checkpoint quantizes attention, FFN and expert weights except the kinds it lists as
    unquantized (`kept`: from `modules_to_not_convert`, `ignore`, `ignored_layers` or ModelOpt's
    `exclude_modules`); routers and the input embedding stay in the unquantized dtype as vLLM loads
    them, and the LM head too unless the config says `lm_head: true` (GPTQ). This is the one LM-head
    dtype rule: the step models and the memory model both read `lm_head` from here.
    """

    attention: str
    mlp: str
    experts: str
    router: str
    embedding: str
    lm_head: str
    kept: frozenset[str] = frozenset()

    @classmethod
    def uniform(cls, dtype: str) -> ModuleDtypes:
        """Every module in `dtype` (an unquantized checkpoint)."""
        return cls(dtype, dtype, dtype, dtype, dtype, dtype)

    def of(self, kind: str) -> str:
        """The dtype of module kind `kind` (a `ModuleKind`)."""
        return getattr(self, kind)

    def requantized(self, dtype: str) -> ModuleDtypes:
        """These dtypes with the quantizable kinds not in `kept` stored in `dtype` (a user's
        --weight-dtype override); router, embedding and LM head keep theirs."""
        return replace(self, **{kind: dtype for kind in _QUANTIZABLE if kind not in self.kept})


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer's architecture.

    Attributes:
        name: short name (file stem of its config).
        architecture: Hugging Face `architectures[0]` or `model_type`.
        hidden_size: model width.
        vocab_size: vocabulary size.
        layers: every decoder layer in order.
        tie_embeddings: LM head shares the embedding matrix.
        max_position_embeddings: longest context the model supports, in tokens.
        weight_dtype: native dtype of the bulk of the weights ("bf16", "fp8", "fp4", ...).
        source: where the config came from (file path).
        module_dtypes: stored dtype of each module kind (default: all `weight_dtype`).
    """

    name: str
    architecture: str
    hidden_size: int
    vocab_size: int
    layers: tuple[LayerSpec, ...]
    tie_embeddings: bool
    max_position_embeddings: int
    weight_dtype: str
    source: str
    module_dtypes: ModuleDtypes | None = None

    def dtypes(self, weight_dtype: str | None = None) -> ModuleDtypes:
        """Per-module weight dtypes, with the quantizable modules in `weight_dtype` when that
        overrides the checkpoint's own dtype (None: as the checkpoint stores them)."""
        native = self.module_dtypes or ModuleDtypes.uniform(self.weight_dtype)
        if weight_dtype is None or weight_dtype == self.weight_dtype:
            return native
        return native.requantized(weight_dtype)

    @cached_property
    def layer_groups(self) -> tuple[tuple[LayerSpec, int], ...]:
        """Distinct layer kinds with how many layers of each, in first-appearance order."""
        return tuple(Counter(self.layers).items())

    @property
    def num_layers(self) -> int:
        """Decoder layers."""
        return len(self.layers)

    @cached_property
    def params(self) -> ParamCount:
        """Parameter counts (see `ParamCount` for the active-count convention)."""
        embedding = self.vocab_size * self.hidden_size
        lm_head = 0 if self.tie_embeddings else embedding
        total = active = embedding + lm_head + self.hidden_size  # final norm
        for layer, count in self.layer_groups:
            layer_total, layer_active = layer.params(self.hidden_size)
            total += count * layer_total
            active += count * layer_active
        return ParamCount(total=total, active=active, embedding=embedding, lm_head=lm_head)

    @cached_property
    def params_by_module(self) -> dict[str, int]:
        """Parameters of each `ModuleKind`, plus "norm" (layer and final norms); they sum to
        `params.total`."""
        h = self.hidden_size
        out = dict.fromkeys(("attention", "mlp", "experts", "router", "norm"), 0)
        out["embedding"] = self.params.embedding
        out["lm_head"] = self.params.lm_head
        out["norm"] = h
        for layer, count in self.layer_groups:
            out["attention"] += count * layer.attention.params(h)
            out["mlp"] += count * layer.mlp.dense_params(h)
            out["norm"] += count * layer.norms * h
            if layer.mlp.kind == "moe":
                out["experts"] += count * layer.mlp.num_experts * layer.mlp.expert_params(h)
                out["router"] += count * layer.mlp.router_params(h)
        return out

    @property
    def is_moe(self) -> bool:
        """True when any layer routes tokens to experts."""
        return any(layer.mlp.kind == "moe" for layer, _ in self.layer_groups)

    def kv_bytes_per_token(self, kv_dtype: str = "bf16") -> float:
        """KV-cache bytes per token of context for the whole model, ignoring window caps."""
        values = sum(layer.attention.kv_values_per_token() * n for layer, n in self.layer_groups)
        return values * dtype_bytes(kv_dtype)

    def kv_bytes_per_sequence(self, context: int, kv_dtype: str = "bf16",
                              state_dtype: str = "fp32") -> float:
        """KV-cache and recurrent-state bytes one sequence of `context` tokens holds.

        Sliding-window layers hold at most `window` tokens; Mamba layers hold a constant state
        (in `state_dtype`, fp32 by default as vLLM keeps the SSM state).
        """
        kv = state = 0
        for layer, n in self.layer_groups:
            att = layer.attention
            tokens = context if att.window is None else min(context, att.window)
            kv += n * att.kv_values_per_token() * tokens
            state += n * att.state_values_per_sequence()
        return kv * dtype_bytes(kv_dtype) + state * dtype_bytes(state_dtype)


# ----------------------------------------------------------------------------------- parsing

_WEIGHT_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def bundled_model_names() -> list[str]:
    """Names of the model configs shipped with paretoserve."""
    folder = resources.files("paretoserve.catalog") / "models"
    return sorted(p.name[:-5] for p in folder.iterdir()
                  if p.name.endswith(".json") and not p.name.endswith(_QUANT_SIDECAR))


def load_model(name_or_path: str) -> ModelSpec:
    """Load a bundled model by name (case-insensitive) or a local `config.json` / folder holding one."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise UserError(f"folder {name_or_path} holds no config.json")
    if path.is_file():
        return parse_config(path, name=path.parent.name if path.name == "config.json" else path.stem)
    names = bundled_model_names()
    lookup = {n.lower(): n for n in names}
    key = _bundled_key(name_or_path.lower().removesuffix(".json"), list(lookup))
    if key not in lookup:
        close = difflib.get_close_matches(key, list(lookup), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(lookup[c] for c in close)}?" if close else ""
        raise UserError(f"unknown model '{name_or_path}': not a bundled name nor a config.json path."
                        f"{hint} Bundled: {', '.join(names)}")
    ref = resources.files("paretoserve.catalog") / "models" / f"{lookup[key]}.json"
    with resources.as_file(ref) as file:
        return parse_config(file, name=lookup[key])


def _bundled_key(key: str, known: list[str]) -> str:
    """Resolve a Hugging Face id like "meta-llama/Llama-3.1-8B" to a bundled name
    ("meta-llama-3.1-8b") when exactly one bundled name is it or ends with "-" + it."""
    if key in known:
        return key
    tail = key.rsplit("/", 1)[-1]
    matches = [k for k in known if k == tail or k.endswith("-" + tail)]
    return matches[0] if len(matches) == 1 else key


def parse_config(path: Path, *, name: str) -> ModelSpec:
    """Parse one Hugging Face config.json file into a `ModelSpec`.

    Every integer field must lie in its range of `_LIMITS` (generous for any real model), heads
    must divide consistently, and top-k must not exceed the experts; anything else is a one-line
    `UserError` naming the file and field.
    """
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise UserError("expected a JSON object (a Hugging Face config.json)", file=str(path))
    cfg = _Config(raw, str(path))
    dtypes = _module_dtypes(path, cfg, raw)
    layers = _layers(cfg)
    return ModelSpec(
        name=name,
        architecture=_architecture(cfg, raw),
        hidden_size=cfg.int("hidden_size"),
        vocab_size=cfg.int("vocab_size"),
        layers=layers,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", raw.get("tie_word_embeddings", False))),
        max_position_embeddings=cfg.int("max_position_embeddings", 4096),
        weight_dtype=dtypes.experts if any(lay.mlp.kind == "moe" for lay in layers) else dtypes.mlp,
        source=str(path),
        module_dtypes=dtypes,
    )


#: Accepted range [low, high] of each integer field of config.json. The bounds are generous (the
#: largest value in any bundled config is a small fraction of each), and keep a typo from making
#: the catalog report absurd figures (hidden_size 0) or loop over 10^9 layers. Fields not listed
#: take `_DEFAULT_LIMITS`.
_LIMITS: dict[str, tuple[int, int]] = {
    "hidden_size": (1, 1_000_000),
    "vocab_size": (1, 100_000_000),
    "num_hidden_layers": (1, 10_000),
    "num_attention_heads": (1, 100_000),
    "num_key_value_heads": (1, 100_000),
    "num_global_key_value_heads": (1, 100_000),
    "head_dim": (0, 100_000),  # 0: hidden_size / num_attention_heads
    "global_head_dim": (1, 100_000),
    "attention_head_dim": (1, 100_000),
    "qk_nope_head_dim": (1, 100_000),
    "qk_rope_head_dim": (0, 100_000),
    "v_head_dim": (1, 100_000),
    "kv_lora_rank": (1, 1_000_000),
    "q_lora_rank": (0, 1_000_000),
    "intermediate_size": (1, 10_000_000),
    "moe_intermediate_size": (1, 10_000_000),
    "shared_expert_intermediate_size": (1, 10_000_000),
    "max_position_embeddings": (1, 1_000_000_000),
    "sliding_window": (1, 1_000_000_000),
    "num_local_experts": (1, 100_000),
    "n_routed_experts": (1, 100_000),
    "num_experts": (1, 100_000),
    "n_shared_experts": (1, 100_000),
    "num_experts_per_tok": (1, 100_000),
    "top_k_experts": (1, 100_000),
    "mamba_num_heads": (1, 100_000),
    "mamba_head_dim": (1, 100_000),
    "ssm_state_size": (1, 100_000),
    "n_groups": (1, 100_000),
    "conv_kernel": (1, 1_000),
    "first_k_dense_replace": (0, 10_000),
    "moe_layer_freq": (0, 10_000),
    "interleave_moe_layer_step": (0, 10_000),
    "decoder_sparse_step": (0, 10_000),
}
_DEFAULT_LIMITS = (0, 10_000_000)


class _Config:
    """Typed access to a config's fields; multimodal configs keep the text model in `text_config`."""

    def __init__(self, raw: dict[str, Any], file: str) -> None:
        text = raw.get("text_config")
        self.data = {**raw, **text} if isinstance(text, dict) else raw
        self.file = file

    def get(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key)
        return default if value is None else value

    def int(self, key: str, default: int | None = None, *, high: int | None = None) -> int:
        """The integer `key` (or `default` when absent or null) within its `_LIMITS` range;
        `high` lowers the upper bound (e.g. top-k to the number of experts)."""
        value = self.get(key, default)
        low, top = _LIMITS.get(key, _DEFAULT_LIMITS)
        top = top if high is None else min(top, high)
        if value is None:
            raise UserError(f"missing required field (expected an integer from {low:,} to {top:,})",
                            file=self.file, field=key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= top:
            raise UserError(f"expected an integer from {low:,} to {top:,}, got {str(value)[:40]}",
                            file=self.file, field=key)
        return value

    def list(self, key: str, item: type) -> list[Any]:
        """The list `key` of `item` values ([] when absent or null)."""
        value = self.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, item) and not isinstance(v, bool)
                                                  for v in value):
            what = {str: "strings", int: "integers"}.get(item, item.__name__)
            raise UserError(f"expected a list of {what}, got {str(value)[:40]}",
                            file=self.file, field=key)
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        """The object `key` ({} when absent or null)."""
        value = self.get(key, {})
        if not isinstance(value, dict):
            raise UserError(f"expected a JSON object, got {str(value)[:40]}", file=self.file, field=key)
        return value


def _architecture(cfg: _Config, raw: dict[str, Any]) -> str:
    """Hugging Face `architectures[0]`, else `model_type`."""
    names = _Config(raw, cfg.file).list("architectures", str)
    return names[0] if names else str(cfg.get("model_type", "unknown"))


#: The quantization file a ModelOpt checkpoint ships beside its config.json (`hf_quant_config.json`;
#: bundled as `<name>.hf_quant_config.json`): it, not config.json, says such a checkpoint is FP8.
_QUANT_SIDECAR = "hf_quant_config.json"
_MODELOPT_ALGOS = {"fp8": "fp8", "fp8_pb_wo": "fp8", "fp8_block": "fp8", "nvfp4": "fp4", "nvfp4_awq": "fp4",
                   "int8_sq": "int8", "int8_wo": "int8", "w4a16_awq": "int4", "w4a8_awq": "int4",
                   "int4_awq": "int4"}


def _sidecar(path: Path) -> tuple[str, list[str]] | None:
    """(weight dtype, excluded module names) of a ModelOpt `hf_quant_config.json` beside `path`
    (None: no such file)."""
    sidecar = path.with_name(_QUANT_SIDECAR if path.name == "config.json"
                             else f"{path.name.removesuffix('.json')}.{_QUANT_SIDECAR}")
    if not sidecar.is_file():
        return None
    try:
        quant = read_json(sidecar)["quantization"]
        algo = quant["quant_algo"]
    except (KeyError, TypeError):
        raise UserError("expected a ModelOpt quantization file with quantization.quant_algo",
                        file=str(sidecar), field="quantization.quant_algo") from None
    dtype = _MODELOPT_ALGOS.get(str(algo).lower())
    if dtype is None:
        raise UserError(f"unknown ModelOpt quant_algo {algo!r}; known: {', '.join(_MODELOPT_ALGOS)}",
                        file=str(sidecar), field="quantization.quant_algo")
    return dtype, _Config(quant, str(sidecar)).list("exclude_modules", str)


def _compressed_tensors_format(quant: dict[str, Any]) -> tuple[int, str] | None:
    """(weight bits, "int" or "float") of a compressed-tensors config whose groups all quantise
    weights alike (None otherwise)."""
    groups = quant.get("config_groups")
    if not isinstance(groups, dict):
        return None
    formats = {(w.get("num_bits"), w.get("type", "int")) for w in
               (((g or {}).get("weights") or {}) for g in groups.values())}
    if len(formats) != 1:
        return None
    bits, kind = formats.pop()
    return (bits, str(kind)) if isinstance(bits, int) else None


def _quantized_dtype(quant: dict[str, Any]) -> str | None:
    """The dtype a `quantization_config` stores quantized weights in (None: not quantized)."""
    method = str(quant.get("quant_method", "")).lower()
    if method == "fp8" or quant.get("fmt") in ("e4m3", "e5m2"):
        return "fp8"
    if method in ("mxfp4", "nvfp4"):
        return "fp4"
    if method in ("awq", "gptq") or quant.get("bits") == 4:
        return "int4"
    ct = _compressed_tensors_format(quant) if method == "compressed-tensors" else None
    if ct is not None:
        bits, kind = ct
        if bits == 4:
            return "int4"  # e.g. Kimi-K2.5: int4 routed experts
        if bits == 8:
            return "fp8" if kind == "float" else "int8"  # int8: w8a8 (SmoothQuant-style)
    return None


#: Names of the lists with which checkpoints mark modules left unquantized (engine_facts §3).
_UNQUANTIZED_LISTS = ("modules_to_not_convert", "ignore", "ignored_layers", "exclude_modules")
_ATTENTION_NAME = re.compile(r"self_attn|attention|\battn|mixer|mamba|\b(q|k|v|o|qkv|q_a|q_b|kv_a|kv_b)_proj")
_ROUTER_NAME = re.compile(r"router|(^|[.*:])gate($|[^_a-z])")


def _module_kind(name: str) -> ModuleKind | None:
    """The module kind a name (or `re:` pattern) in an unquantized-modules list covers; None for
    what holds no GEMM weight of ours (layer norms, score biases)."""
    name = name.lower().removeprefix("re:")
    if "norm" in name or "bias" in name:
        return None
    if "lm_head" in name:
        return "lm_head"
    if "embed" in name:
        return "embedding"
    if "shared_expert" in name:
        return "mlp"
    if "expert" in name:
        return "experts"
    if _ATTENTION_NAME.search(name):
        return "attention"
    if "_proj" in name and "mlp" in name:
        return "mlp"
    if _ROUTER_NAME.search(name):
        return "router"
    return None


def _module_dtypes(path: Path, cfg: _Config, raw: dict[str, Any]) -> ModuleDtypes:
    """Per-module weight dtypes from `quantization_config` or a ModelOpt sidecar (see `ModuleDtypes`)."""
    base = _WEIGHT_DTYPES.get(str(cfg.get("torch_dtype", cfg.get("dtype", "bfloat16"))), "bf16")
    quant = _Config(raw, cfg.file).mapping("quantization_config") or cfg.mapping("quantization_config")
    sidecar = _sidecar(path)
    if sidecar is not None:
        dtype, names = sidecar
    else:
        dtype = _quantized_dtype(quant)
        qcfg = _Config(quant, cfg.file)
        names = [n for key in _UNQUANTIZED_LISTS for n in qcfg.list(key, str)]
    if dtype is None:
        return ModuleDtypes.uniform(base)
    kept = frozenset(k for k in map(_module_kind, names) if k is not None)
    quantized = {kind: base if kind in kept else dtype for kind in _QUANTIZABLE}
    lm_head = dtype if quant.get("lm_head") is True and "lm_head" not in kept else base
    return ModuleDtypes(**quantized, router=base, embedding=base, lm_head=lm_head, kept=kept)


def _layers(cfg: _Config) -> tuple[LayerSpec, ...]:
    pattern = cfg.get("hybrid_override_pattern")
    if pattern:
        return _hybrid_layers(cfg, str(pattern))
    n_layers = cfg.int("num_hidden_layers")
    hidden = cfg.int("hidden_size")
    layer_types = cfg.list("layer_types", str)
    if layer_types and len(layer_types) != n_layers:
        raise UserError(f"has {len(layer_types)} entries, expected num_hidden_layers={n_layers}",
                        file=cfg.file, field="layer_types")
    layers = []
    for i in range(n_layers):
        kind = layer_types[i] if layer_types else "full_attention"
        layers.append(LayerSpec(attention=_attention(cfg, hidden, kind), mlp=_mlp(cfg, i)))
    return tuple(layers)


def _attention(cfg: _Config, hidden: int, layer_type: str) -> AttentionSpec:
    heads = cfg.int("num_attention_heads")
    kv_heads = cfg.int("num_key_value_heads", heads)
    if cfg.get("kv_lora_rank"):
        return AttentionSpec(
            kind="mla", num_heads=heads, num_kv_heads=heads, head_dim=cfg.int("qk_nope_head_dim"),
            v_head_dim=cfg.int("v_head_dim"), q_lora_rank=cfg.int("q_lora_rank", 0),
            kv_lora_rank=cfg.int("kv_lora_rank"), rope_dim=cfg.int("qk_rope_head_dim"),
            bias=bool(cfg.get("attention_bias", False)))
    head_dim = cfg.int("head_dim", 0) or _derived_head_dim(cfg, hidden, heads)
    window = None
    kv_shared = False
    if layer_type == "sliding_attention":
        window = cfg.int("sliding_window")
    elif layer_type == "full_attention" and cfg.get("global_head_dim"):
        # Gemma 4 full-attention layers: wider heads, fewer KV heads, values share the keys.
        head_dim = cfg.int("global_head_dim")
        kv_heads = cfg.int("num_global_key_value_heads", kv_heads)
        kv_shared = bool(cfg.get("attention_k_eq_v", False))
    elif cfg.get("use_sliding_window") and cfg.get("sliding_window"):
        window = cfg.int("sliding_window")
    if heads % kv_heads:
        raise UserError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads="
                        f"{kv_heads}", file=cfg.file, field="num_key_value_heads")
    return AttentionSpec(kind="gqa", num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                         v_head_dim=head_dim, window=window, kv_shared=kv_shared,
                         bias=bool(cfg.get("attention_bias", False)))


def _derived_head_dim(cfg: _Config, hidden: int, heads: int) -> int:
    """hidden_size / num_attention_heads, the head width when a config gives no head_dim."""
    if hidden % heads:
        raise UserError(f"missing, and hidden_size={hidden} is not a multiple of num_attention_heads="
                        f"{heads}; give head_dim", file=cfg.file, field="head_dim")
    return hidden // heads


def _mlp(cfg: _Config, index: int) -> MlpSpec:
    gated = str(cfg.get("hidden_act", cfg.get("hidden_activation", "silu"))) != "relu2"
    dense = MlpSpec(kind="dense", intermediate=cfg.int("intermediate_size"), gated=gated,
                    bias=bool(cfg.get("mlp_bias", False)))
    experts_key = next((key for key in ("num_local_experts", "n_routed_experts", "num_experts")
                        if cfg.get(key)), None)
    if experts_key is None or not _is_moe_layer(cfg, index):
        return dense
    experts = cfg.int(experts_key)
    top_k_key = "num_experts_per_tok" if cfg.get("num_experts_per_tok") else "top_k_experts"
    top_k = cfg.int(top_k_key, high=experts)
    expert_width = cfg.int("moe_intermediate_size", cfg.int("intermediate_size"))
    shared = 0
    if cfg.get("n_shared_experts"):
        shared = cfg.int("n_shared_experts") * expert_width
    elif cfg.get("shared_expert_intermediate_size"):
        shared = cfg.int("shared_expert_intermediate_size")
    elif cfg.get("model_type") == "llama4_text":
        shared = expert_width  # Llama 4: one always-on shared expert of the routed width
    elif cfg.get("enable_moe_block"):
        shared = cfg.int("intermediate_size")  # Gemma 4: a dense MLP beside the routed experts
    model_type = str(cfg.get("model_type", ""))
    return MlpSpec(kind="moe", intermediate=shared, gated=gated, num_experts=experts, top_k=top_k,
                   expert_intermediate=expert_width, bias=model_type == "gpt_oss")


def _is_moe_layer(cfg: _Config, index: int) -> bool:
    if index < cfg.int("first_k_dense_replace", 0):
        return False
    if index in cfg.list("mlp_only_layers", int):
        return False
    step = cfg.int("moe_layer_freq", 0) or cfg.int("interleave_moe_layer_step", 0) \
        or cfg.int("decoder_sparse_step", 1)
    return (index + 1) % step == 0 if step > 1 else True


def _hybrid_layers(cfg: _Config, pattern: str) -> tuple[LayerSpec, ...]:
    """Nemotron-H: one character per layer — M = Mamba-2 mixer, * = attention, - = MLP."""
    hidden = cfg.int("hidden_size")
    if len(pattern) != cfg.int("num_hidden_layers"):
        raise UserError(f"has {len(pattern)} layers, expected num_hidden_layers", file=cfg.file,
                        field="hybrid_override_pattern")
    mamba = AttentionSpec(kind="mamba", mamba_heads=cfg.int("mamba_num_heads"),
                          mamba_head_dim=cfg.int("mamba_head_dim"), ssm_state=cfg.int("ssm_state_size"),
                          ssm_groups=cfg.int("n_groups"), conv_kernel=cfg.int("conv_kernel"))
    heads = cfg.int("num_attention_heads")
    head_dim = (cfg.int("attention_head_dim") if cfg.get("attention_head_dim") is not None
                else cfg.int("head_dim", 0) or _derived_head_dim(cfg, hidden, heads))
    attention = AttentionSpec(kind="gqa", num_heads=heads, num_kv_heads=cfg.int("num_key_value_heads"),
                              head_dim=head_dim, v_head_dim=head_dim)
    none_attn = AttentionSpec(kind="none")
    no_mlp = MlpSpec(kind="none")
    gated = str(cfg.get("mlp_hidden_act", "silu")) != "relu2"
    mlp = MlpSpec(kind="dense", intermediate=cfg.int("intermediate_size"), gated=gated)
    by_char = {"M": LayerSpec(mamba, no_mlp, norms=1), "*": LayerSpec(attention, no_mlp, norms=1),
               "-": LayerSpec(none_attn, mlp, norms=1)}
    try:
        return tuple(by_char[c] for c in pattern)
    except KeyError as exc:
        raise UserError(f"unknown layer character {exc.args[0]!r}; expected M, * or -", file=cfg.file,
                        field="hybrid_override_pattern") from None
