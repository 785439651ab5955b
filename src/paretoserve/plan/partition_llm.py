"""An LLM (`ModelSpec`) as a stage chain for the partitioner: heterogeneous pipeline stages.

Units, in order: the embedding, each decoder layer, the LM head. The seconds of each on a device come
from the datasheet step model (`perf.roofline.Roofline.step_time`) for one step of `sequences`
sequences: a prefill of `tokens` prompt tokens each, or a decode step at context `tokens` (one new
token each). The embedding and LM head are their own operators; the decoder layers share the rest
equally, so the model must have one kind of layer (hybrid or mixed-layer models are refused). Between
stages the hidden state of every token crosses the link in bf16 (hidden × 2 bytes per token, as the
step model's pipeline send/recv). Weights must fit each stage's device; the KV cache is not counted.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from paretoserve.catalog.device import DeviceSpec
from paretoserve.catalog.dtypes import dtype_bytes, normalize_dtype
from paretoserve.catalog.model import ModelSpec
from paretoserve.errors import UserError
from paretoserve.perf.roofline import Efficiency, Roofline
from paretoserve.perf.shape import PrefillChunk, StepShape
from paretoserve.plan.partition import SplitPoint, StageChain

_NOT_LAYERS = ("embed", "lm_head")
ACTIVATION_BYTES = 2.0  # bf16 hidden states


def llm_chain(model: ModelSpec, *, phase: Literal["prefill", "decode"] = "prefill", sequences: int = 1,
              tokens: int = 1024, weight_dtype: str | None = None,
              efficiency: Efficiency | None = None) -> StageChain:
    """The chain of `model` for one prefill or decode step (see the module docstring)."""
    if phase not in ("prefill", "decode"):
        raise UserError(f"--phase {phase!r}: expected prefill or decode", field="phase")
    if sequences < 1 or tokens < 1:
        raise UserError("sequences (--batch) and --tokens must be >= 1")
    if len(model.layer_groups) != 1:
        raise UserError(f"{model.name} has {len(model.layer_groups)} kinds of layers; the partitioner splits "
                        "models with one layer kind only")
    layer = model.layer_groups[0][0]
    layers = model.num_layers
    if phase == "prefill":
        shape = StepShape(prefill=(PrefillChunk(tokens, 0, True),) * sequences)
        tokens_per_sequence = tokens
    else:
        shape = StepShape(decode=(tokens,) * sequences)
        tokens_per_sequence = 1
    wb = dtype_bytes(normalize_dtype(weight_dtype or model.weight_dtype))
    h = model.hidden_size
    table = model.vocab_size * h * wb
    params = np.array([table, *[layer.params(h)[0] * wb] * layers, table], dtype=float)
    per_sequence = tokens_per_sequence * h * ACTIVATION_BYTES
    activations = np.full(layers + 2, per_sequence * sequences)

    def seconds(device: DeviceSpec) -> np.ndarray:
        ops = Roofline(model, device, weight_dtype=weight_dtype, efficiency=efficiency).step_time(shape).ops
        named = {name: sum(op.seconds for op in ops if op.name == name) for name in _NOT_LAYERS}
        per_layer = sum(op.seconds for op in ops if op.name not in _NOT_LAYERS) / layers
        return np.array([named["embed"], *[per_layer] * layers, named["lm_head"]])

    points = [SplitPoint(k, "embed" if k == 1 else f"layers.{k - 2}", f"layers.{k - 1}" if k <= layers else "lm_head",
                         per_sequence) for k in range(1, layers + 2)]
    return StageChain(model.name, sequences, points, params, activations, seconds)
