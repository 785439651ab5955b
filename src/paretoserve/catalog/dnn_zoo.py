"""Bundled DNN graphs, generated with `onnx.helper` on first use (no files, no downloads, no weights).

The architectures are public; weights are declared as shape-only graph inputs (`doc_string`
"weight", see `paretoserve.catalog.dnn_graph`), so a graph is a few kB and carries no trained values.
Batch normalisation is folded into the convolutions (as inference runtimes do) and ReLU6 is a ReLU
(same cost). Node names follow torchvision's module paths ("features.3.conv.1", "layer2.0.conv1"), so a
split point reads like the PyTorch model's.

- MobileNetV2 (width 1.0): Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
  CVPR 2018 (Table 2; 300 M multiply-adds and 3.4 M parameters at 224×224, Table 4).
- ResNet-18 / ResNet-50: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016
  (Table 1: 1.8 and 3.8 ×10⁹ FLOPs, counted as multiply-adds). ResNet-50 here is torchvision's v1.5
  (stride 2 in the 3×3 convolution of the first bottleneck of a stage; 4.09 G multiply-adds in
  torchvision's model table), the variant deployed today.
- ViT-Tiny/16 (DeiT-Ti): Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, at the
  DeiT-Ti size of Touvron et al., "Training data-efficient image transformers", ICML 2021
  (embedding 192, 12 layers, 3 heads, MLP 768, 224×224, patch 16).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_OPSET = 20


class _Builder:
    """Accumulates nodes and shape-only weights of one graph."""

    def __init__(self) -> None:
        from onnx import helper

        self.h = helper
        self.nodes: list[Any] = []
        self.weights: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def weight(self, name: str, shape: list[int]) -> str:
        from onnx import TensorProto

        self.weights.append(self.h.make_tensor_value_info(name, TensorProto.FLOAT, shape, doc_string="weight"))
        return name

    def const(self, name: str, values: list[int] | list[float], *, ints: bool = True) -> str:
        from onnx import TensorProto

        dtype = TensorProto.INT64 if ints else TensorProto.FLOAT
        self.inits.append(self.h.make_tensor(name, dtype, [len(values)], values))
        return name

    def op(self, op_type: str, name: str, inputs: list[str], **attrs: Any) -> str:
        out = f"{name}:out"
        self.nodes.append(self.h.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def conv(self, name: str, x: str, c_in: int, c_out: int, k: int, stride: int = 1, group: int = 1,
             relu: bool = True, pad: int | None = None) -> str:
        w = self.weight(f"{name}.weight", [c_out, c_in // group, k, k])
        b = self.weight(f"{name}.bias", [c_out])
        y = self.op("Conv", name, [x, w, b], kernel_shape=[k, k], strides=[stride, stride],
                    pads=[k // 2 if pad is None else pad] * 4, group=group)
        return self.op("Relu", f"{name}.relu", [y]) if relu else y

    def linear(self, name: str, x: str, n_in: int, n_out: int) -> str:
        w = self.weight(f"{name}.weight", [n_in, n_out])
        b = self.weight(f"{name}.bias", [n_out])
        return self.op("Add", f"{name}.add", [self.op("MatMul", name, [x, w]), b])

    def model(self, name: str, x_shape: list[int], out: str) -> Any:
        from onnx import TensorProto

        graph = self.h.make_graph(
            self.nodes, name, [self.h.make_tensor_value_info("input", TensorProto.FLOAT, x_shape), *self.weights],
            [self.h.make_tensor_value_info(out, TensorProto.FLOAT, None)], initializer=self.inits)
        return self.h.make_model(graph, opset_imports=[self.h.make_opsetid("", _OPSET)],
                                 producer_name="paretoserve.dnn_zoo")


def _head(b: _Builder, x: str, channels: int, classes: int, name: str) -> str:
    x = b.op("GlobalAveragePool", "avgpool", [x])
    x = b.op("Flatten", "flatten", [x], axis=1)
    w = b.weight(f"{name}.weight", [classes, channels])
    bias = b.weight(f"{name}.bias", [classes])
    return b.op("Gemm", name, [x, w, bias], transB=1)


def mobilenet_v2(resolution: int = 224, classes: int = 1000) -> Any:
    """MobileNetV2 1.0 as torchvision builds it: features.0 … features.18, then the classifier."""
    b = _Builder()
    x = b.conv("features.0.0", "input", 3, 32, 3, stride=2)
    c_in, index = 32, 1
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            stride, hidden, p = (s if i == 0 else 1), c_in * t, f"features.{index}.conv"
            y, j = x, 0
            if t != 1:
                y, j = b.conv(f"{p}.{j}", y, c_in, hidden, 1), 1
            y = b.conv(f"{p}.{j}", y, hidden, hidden, 3, stride=stride, group=hidden)
            y = b.conv(f"{p}.{j + 1}", y, hidden, c, 1, relu=False)
            x = b.op("Add", f"features.{index}.add", [x, y]) if stride == 1 and c_in == c else y
            c_in, index = c, index + 1
    x = b.conv("features.18.0", x, 320, 1280, 1)
    return b.model("mobilenetv2", [1, 3, resolution, resolution], _head(b, x, 1280, classes, "classifier.1"))


def resnet(depth: int, resolution: int = 224, classes: int = 1000) -> Any:
    """ResNet-18 (basic blocks) or ResNet-50 (bottlenecks, torchvision v1.5) as torchvision builds it."""
    blocks, bottleneck = {18: ((2, 2, 2, 2), False), 50: ((3, 4, 6, 3), True)}[depth]
    b = _Builder()
    x = b.conv("conv1", "input", 3, 64, 7, stride=2)
    x = b.op("MaxPool", "maxpool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c_in = 64
    for stage, n in enumerate(blocks):
        width = 64 * 2 ** stage
        c_out = width * 4 if bottleneck else width
        for i in range(n):
            stride, p = (2 if i == 0 and stage > 0 else 1), f"layer{stage + 1}.{i}"
            if bottleneck:
                y = b.conv(f"{p}.conv1", x, c_in, width, 1)
                y = b.conv(f"{p}.conv2", y, width, width, 3, stride=stride)
                y = b.conv(f"{p}.conv3", y, width, c_out, 1, relu=False)
            else:
                y = b.conv(f"{p}.conv1", x, c_in, width, 3, stride=stride)
                y = b.conv(f"{p}.conv2", y, width, width, 3, relu=False)
            shortcut = b.conv(f"{p}.downsample", x, c_in, c_out, 1, stride=stride, relu=False) \
                if stride != 1 or c_in != c_out else x
            x = b.op("Relu", f"{p}.relu", [b.op("Add", f"{p}.add", [y, shortcut])])
            c_in = c_out
    return b.model(f"resnet{depth}", [1, 3, resolution, resolution], _head(b, x, c_in, classes, "fc"))


def vit(dim: int = 192, depth: int = 12, heads: int = 3, mlp: int = 768, patch: int = 16,
        resolution: int = 224, classes: int = 1000) -> Any:
    """A ViT encoder (pre-norm, class token, learned position embedding) as timm builds it."""
    b = _Builder()
    grid = resolution // patch
    tokens, head_dim = grid * grid + 1, dim // heads
    x = b.conv("patch_embed.proj", "input", 3, dim, patch, stride=patch, relu=False, pad=0)
    x = b.op("Reshape", "patch_embed.flatten", [x, b.const("shape.patches", [1, dim, grid * grid])])
    x = b.op("Transpose", "patch_embed.transpose", [x], perm=[0, 2, 1])
    x = b.op("Concat", "cls_token", [b.weight("cls_token.weight", [1, 1, dim]), x], axis=1)
    x = b.op("Add", "pos_embed", [x, b.weight("pos_embed.weight", [1, tokens, dim])])
    split_heads = b.const("shape.heads", [1, tokens, heads, head_dim])
    merge_heads = b.const("shape.merge", [1, tokens, dim])
    scale = b.const("attn.scale", [head_dim ** -0.5], ints=False)
    for i in range(depth):
        p = f"blocks.{i}"

        def norm(name: str, y: str) -> str:
            return b.op("LayerNormalization", name, [y, b.weight(f"{name}.weight", [dim]),
                                                     b.weight(f"{name}.bias", [dim])], axis=-1)

        y = norm(f"{p}.norm1", x)
        q, k, v = (b.op("Reshape", f"{p}.attn.{n}.heads", [b.linear(f"{p}.attn.{n}", y, dim, dim), split_heads])
                   for n in ("q", "k", "v"))
        q = b.op("Transpose", f"{p}.attn.q.t", [q], perm=[0, 2, 1, 3])
        k = b.op("Transpose", f"{p}.attn.k.t", [k], perm=[0, 2, 3, 1])
        v = b.op("Transpose", f"{p}.attn.v.t", [v], perm=[0, 2, 1, 3])
        scores = b.op("Mul", f"{p}.attn.scale", [b.op("MatMul", f"{p}.attn.qk", [q, k]), scale])
        probs = b.op("Softmax", f"{p}.attn.softmax", [scores], axis=-1)
        o = b.op("Transpose", f"{p}.attn.o.t", [b.op("MatMul", f"{p}.attn.pv", [probs, v])], perm=[0, 2, 1, 3])
        o = b.linear(f"{p}.attn.proj", b.op("Reshape", f"{p}.attn.merge", [o, merge_heads]), dim, dim)
        x = b.op("Add", f"{p}.add1", [x, o])
        y = b.op("Gelu", f"{p}.mlp.act", [b.linear(f"{p}.mlp.fc1", norm(f"{p}.norm2", x), dim, mlp)])
        x = b.op("Add", f"{p}.add2", [x, b.linear(f"{p}.mlp.fc2", y, mlp, dim)])
    x = b.op("LayerNormalization", "norm", [x, b.weight("norm.weight", [dim]), b.weight("norm.bias", [dim])],
             axis=-1)
    x = b.op("Gather", "cls_select", [x, b.const("cls.index", [0])], axis=1)
    x = b.op("Flatten", "head.flatten", [x], axis=1)
    w, bias = b.weight("head.weight", [classes, dim]), b.weight("head.bias", [classes])
    return b.model("vit_tiny", [1, 3, resolution, resolution], b.op("Gemm", "head", [x, w, bias], transB=1))


_SANDLER = ("MobileNetV2 1.0 (Sandler et al., CVPR 2018), generated by paretoserve.catalog.dnn_zoo; "
            "shape-only weights")
_HE = "ResNet (He et al., CVPR 2016; torchvision layout), generated by paretoserve.catalog.dnn_zoo; shape-only weights"
_VIT = ("ViT-Tiny/16 = DeiT-Ti (Dosovitskiy et al., ICLR 2021; Touvron et al., ICML 2021), generated by "
        "paretoserve.catalog.dnn_zoo; shape-only weights")

#: Bundled name -> (builder, attribution).
BUNDLED: dict[str, tuple[Callable[[], Any], str]] = {
    "mobilenetv2": (mobilenet_v2, f"{_SANDLER}; 224x224, 1000 classes"),
    "mobilenetv2_cifar10": (lambda: mobilenet_v2(32, 10), f"{_SANDLER}; 32x32, 10 classes (CIFAR-10)"),
    "resnet18": (lambda: resnet(18), f"{_HE}; 224x224"),
    "resnet50": (lambda: resnet(50), f"{_HE}; v1.5, 224x224"),
    "vit_tiny": (vit, f"{_VIT}; 224x224"),
}


def build_bundled(name: str) -> tuple[Any, str]:
    """(onnx.ModelProto, attribution) of the bundled graph `name` (a key of `BUNDLED`)."""
    builder, source = BUNDLED[name]
    return builder(), source
