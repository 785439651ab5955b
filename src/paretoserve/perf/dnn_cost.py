"""FLOPs, bytes and roofline time of each node of a `DnnGraph` (any DNN imported from ONNX).

Counting rules (per sample; the graph's batch is 1):

- Conv: MACs = output elements × (C_in / group) × kH × kW (a depthwise convolution has group = C_in);
  Gemm / MatMul: MACs = output elements × the reduced dimension (batched MatMul, e.g. attention's
  QKᵀ and PV, included). FLOPs = 2 × MACs, plus the bias adds a Conv or Gemm carries.
- Pooling: one FLOP per input element read by each window (output elements × window size);
  global pooling one per input element.
- Softmax 5, LayerNormalization 8, Gelu 8, Sigmoid / Erf / Tanh 4, other elementwise operators 1
  FLOP per output element; shape-only operators (Reshape, Transpose, Flatten, Concat, Gather, ...) 0.
  An operator outside these lists counts 1 FLOP per output element and is reported by
  `unknown_ops`.
- Bytes: every input tensor read once (parameters included) and every output written once.

Time of a node on a device: `paretoserve.perf.kernels.roofline_seconds` (fixed + max(FLOPs / peak,
bytes / bandwidth)) with the peak and bandwidth scaled by `Efficiency`, the same rule as every other
operator of the step models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from paretoserve.catalog.device import DeviceSpec
from paretoserve.catalog.dnn_graph import DnnGraph, Node
from paretoserve.perf.kernels import roofline_seconds
from paretoserve.perf.roofline import Efficiency

_SHAPE_ONLY = frozenset({"Reshape", "Transpose", "Flatten", "Concat", "Gather", "Squeeze", "Unsqueeze",
                         "Identity", "Slice", "Split", "Shape", "Expand", "Pad", "Dropout", "Cast"})
_PER_ELEMENT = {"Softmax": 5, "LayerNormalization": 8, "Gelu": 8, "Sigmoid": 4, "Erf": 4, "Tanh": 4,
                "HardSigmoid": 3, "HardSwish": 4, "BatchNormalization": 2, "Relu": 1, "Clip": 1, "Add": 1,
                "Sub": 1, "Mul": 1, "Div": 1, "Pow": 1, "Sqrt": 1, "Max": 1, "Min": 1, "LeakyRelu": 1,
                "ReduceMean": 1, "ReduceSum": 1}
_POOLS = frozenset({"MaxPool", "AveragePool"})
_GLOBAL_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool"})


@dataclass(frozen=True, slots=True)
class NodeCost:
    """Work of one node for one sample: multiply-accumulates, FLOPs, parameter and activation bytes."""

    name: str
    op_type: str
    macs: float
    flops: float
    param_bytes: float
    activation_bytes: float

    @property
    def bytes(self) -> float:
        """Bytes moved: parameters plus activations read and written."""
        return self.param_bytes + self.activation_bytes


def node_cost(graph: DnnGraph, node: Node) -> NodeCost:
    """MACs, FLOPs and bytes of `node` (see the module docstring for the rules)."""
    t = graph.tensors
    out = t[node.outputs[0]]
    present = [name for name in node.inputs if name]
    param_bytes = float(sum(t[n].nbytes for n in present if n in graph.params and n in t))
    act_bytes = float(sum(t[n].nbytes for n in present if n not in graph.params and n in t)
                      + sum(t[o].nbytes for o in node.outputs if o in t))
    macs, flops = 0.0, 0.0
    op = node.op_type
    if op == "Conv":
        w = t[node.inputs[1]].shape  # [C_out, C_in / group, kH, kW]
        macs = out.elements * math.prod(w[1:])
        flops = 2.0 * macs + (out.elements if len(present) > 2 else 0)
    elif op in ("Gemm", "MatMul"):
        a = t[node.inputs[0]].shape
        reduced = a[0] if op == "Gemm" and node.attrs.get("transA", 0) else a[-1]
        macs = out.elements * reduced
        flops = 2.0 * macs + (out.elements if op == "Gemm" and len(present) > 2 else 0)
    elif op in _POOLS:
        flops = float(out.elements * math.prod(node.attrs.get("kernel_shape", [1])))
    elif op in _GLOBAL_POOLS:
        flops = float(t[node.inputs[0]].elements)
    elif op in _SHAPE_ONLY:
        flops = 0.0
    else:
        flops = float(_PER_ELEMENT.get(op, 1) * out.elements)
    return NodeCost(node.name, op, float(macs), flops, param_bytes, act_bytes)


def graph_costs(graph: DnnGraph) -> list[NodeCost]:
    """`node_cost` of every node, in the graph's topological order."""
    return [node_cost(graph, node) for node in graph.nodes]


def unknown_ops(graph: DnnGraph) -> list[str]:
    """Operator types of `graph` that the counting rules do not list (costed as 1 FLOP per output)."""
    known = _SHAPE_ONLY | _POOLS | _GLOBAL_POOLS | set(_PER_ELEMENT) | {"Conv", "Gemm", "MatMul"}
    return sorted({n.op_type for n in graph.nodes} - known)


def node_seconds(cost: NodeCost, device: DeviceSpec, *, batch: int = 1, dtype: str = "fp32",
                 eff: Efficiency | None = None) -> float:
    """Roofline seconds of `cost` for a batch of `batch` samples on `device`: FLOPs and activation
    bytes scale with the batch, parameters are read once; one fixed kernel latency per node."""
    eff = eff or Efficiency()
    return roofline_seconds(cost.flops * batch, cost.param_bytes + cost.activation_bytes * batch,
                            device.peak_flops(dtype) * eff.gemm, device.mem_bandwidth * eff.memory,
                            eff.kernel_latency_s)
