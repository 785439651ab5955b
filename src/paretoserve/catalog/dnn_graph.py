"""Any DNN as a layer graph: ONNX import with shape inference (`DnnGraph`, `load_graph`).

A `DnnGraph` is the model description the partitioner needs: its nodes in topological order, the
static shape and element size of every tensor, and which tensors are parameters (weights). FLOP and
byte counts per node are the step model's business (`paretoserve.perf.dnn_cost`).

`load_graph` accepts a bundled name (`paretoserve.catalog.dnn_zoo.BUNDLED`: "mobilenetv2",
"resnet18", "resnet50", "vit_tiny", ...) or a path to an `.onnx` file. Symbolic dimensions (a
dynamic batch) are fixed to 1 before shape inference: every cost is per sample, and the partitioner
scales activations by the batch. Parameters are the graph's initializers plus graph inputs whose
`doc_string` is "weight" (how the bundled graphs declare shape-only weights, so they carry no data).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paretoserve.errors import UserError

#: `doc_string` of a graph input that stands for a weight (shape only, no data).
WEIGHT_DOC = "weight"


@dataclass(frozen=True, slots=True)
class Tensor:
    """A tensor's static shape (batch fixed to 1) and bytes per element."""

    shape: tuple[int, ...]
    itemsize: int

    @property
    def elements(self) -> int:
        """Number of elements (1 for a scalar)."""
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        """Size in bytes."""
        return self.elements * self.itemsize


@dataclass(frozen=True, slots=True)
class Node:
    """One ONNX node: operator, tensor names in and out, attributes, and the block it belongs to
    (`block_of` its name, e.g. "features.3")."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any]
    block: str


@dataclass(frozen=True, slots=True)
class DnnGraph:
    """A DNN as nodes in topological order over tensors with static shapes.

    Attributes:
        name: model name.
        nodes: every compute node, topologically ordered (Constant nodes are folded away).
        tensors: tensor name -> shape and element size, for every tensor the nodes touch.
        params: names of parameter tensors (weights, biases, constants).
        inputs: names of the data inputs (not parameters).
        outputs: names of the graph outputs.
        source: attribution (paper, or the file it was read from).
    """

    name: str
    nodes: tuple[Node, ...]
    tensors: Mapping[str, Tensor]
    params: frozenset[str]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    source: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def param_bytes(self) -> int:
        """Bytes of all parameters."""
        return sum(self.tensors[p].nbytes for p in self.params)

    def crossing(self) -> list[tuple[str, ...]]:
        """For each cut position k = 0 … len(nodes): the activation tensors that a split between
        nodes[:k] and nodes[k:] must send forward (produced before the cut, or a data input, and read
        after it, or a graph output). Index 0 is the input itself, index len(nodes) the outputs."""
        n = len(self.nodes)
        produced = {name: -1 for name in self.inputs}
        last_use = {name: n for name in self.outputs}
        for index, node in enumerate(self.nodes):
            for name in node.inputs:
                if name and name not in self.params:
                    last_use[name] = max(last_use.get(name, index), index)
            for name in node.outputs:
                produced[name] = index
        cuts: list[list[str]] = [[] for _ in range(n + 1)]
        for name, first in produced.items():
            for k in range(first + 1, min(last_use.get(name, first), n) + 1):
                cuts[k].append(name)
        return [tuple(c) for c in cuts]


def is_dnn(name_or_path: str) -> bool:
    """True for a bundled graph name or a path ending in .onnx (what `load_graph` reads)."""
    from paretoserve.catalog.dnn_zoo import BUNDLED

    text = str(name_or_path).strip()
    return text.lower().replace("-", "_") in BUNDLED or text.lower().endswith(".onnx")


def load_graph(name_or_path: str) -> DnnGraph:
    """The bundled graph `name_or_path` or the ONNX file at that path (UserError otherwise)."""
    import onnx

    from paretoserve.catalog.dnn_zoo import BUNDLED, build_bundled

    text = str(name_or_path).strip()
    key = text.lower().replace("-", "_")
    if key in BUNDLED:
        model, source = build_bundled(key)
        return graph_from_onnx(model, name=key, source=source)
    path = Path(text).expanduser()
    if not text.endswith(".onnx") and not path.is_file():
        raise UserError(f"unknown model '{text}'; bundled graphs: {', '.join(sorted(BUNDLED))} "
                        "(or a path to an .onnx file)")
    if not path.is_file():
        raise UserError("ONNX file not found", file=str(path))
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError...
        raise UserError(f"not a readable ONNX model ({type(exc).__name__})", file=str(path)) from None
    return graph_from_onnx(model, name=path.stem, source=f"ONNX file {path}")


def graph_from_onnx(model: Any, *, name: str, source: str) -> DnnGraph:
    """Shape-infer an `onnx.ModelProto` and describe it as a `DnnGraph`."""
    from onnx import helper, numpy_helper, shape_inference

    model = _fix_symbolic_dims(model)
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:  # InferenceError, ValidationError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"ONNX shape inference failed: {first}", file=source) from None
    g = inferred.graph
    tensors: dict[str, Tensor] = {}
    for info in (*g.input, *g.value_info, *g.output):
        t = info.type.tensor_type
        if not info.type.HasField("tensor_type") or not t.HasField("shape"):
            continue
        dims = tuple(d.dim_value for d in t.shape.dim)
        if any(d <= 0 for d in dims):
            continue
        tensors[info.name] = Tensor(dims, helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize)
    params = set()
    for init in g.initializer:
        tensors[init.name] = Tensor(tuple(init.dims), helper.tensor_dtype_to_np_dtype(init.data_type).itemsize)
        params.add(init.name)
    params |= {i.name for i in g.input if i.doc_string == WEIGHT_DOC}
    nodes = []
    for index, node in enumerate(g.node):
        if node.op_type == "Constant":
            value = numpy_helper.to_array(node.attribute[0].t) if node.attribute and node.attribute[0].t else None
            if value is not None:
                tensors[node.output[0]] = Tensor(tuple(value.shape), value.itemsize)
            params.add(node.output[0])
            continue
        missing = [o for o in node.output if o and o not in tensors]
        if missing:
            raise UserError(f"node {node.name or index} ({node.op_type}): no static shape for output "
                            f"'{missing[0]}' after shape inference", file=source)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        node_name = node.name or f"{node.op_type.lower()}_{index}"
        nodes.append(Node(node_name, node.op_type, tuple(node.input), tuple(node.output), attrs,
                          block_of(node_name)))
    if not nodes:
        raise UserError("the ONNX graph has no compute nodes", file=source)
    data_inputs = tuple(i.name for i in g.input if i.name not in params)
    return DnnGraph(name, tuple(nodes), tensors, frozenset(params), data_inputs,
                    tuple(o.name for o in g.output), source)


def block_of(node_name: str) -> str:
    """The top-level block a node belongs to: the first two components of a dotted module path
    ("features.3.conv.1" -> "features.3", "layer2.0.conv1" -> "layer2.0"), the first three of a
    PyTorch-exported path ("/features/features.3/conv/Conv" -> "/features/features.3"), else the name."""
    if node_name.startswith("/"):
        return "/".join(node_name.split("/")[:3])
    return ".".join(node_name.split(".")[:2])


def _fix_symbolic_dims(model: Any) -> Any:
    """A copy of `model` whose graph inputs have every symbolic or unknown dimension set to 1."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for info in copy.graph.input:
        if not info.type.HasField("tensor_type"):
            continue
        for dim in info.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                dim.Clear()
                dim.dim_value = 1
    return copy
