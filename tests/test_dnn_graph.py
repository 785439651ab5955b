"""ONNX import and per-node cost: hand-counted FLOPs of single operators, and the bundled graphs'
totals against the counts their papers (or torchvision's model table) publish."""

from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from paretoserve.catalog.dnn_graph import graph_from_onnx, load_graph
from paretoserve.catalog.dnn_zoo import BUNDLED, build_bundled
from paretoserve.errors import UserError
from paretoserve.perf.dnn_cost import graph_costs, node_cost, node_seconds
from paretoserve.perf.roofline import Efficiency


def _one_node(op: str, x_shape, w_shape, **attrs):
    """A graph with one `op` node on input x and a shape-only weight w (a dynamic batch 'N')."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape[1:]])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, w_shape, doc_string="weight")
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node(op, ["x", "w"], ["y"], name="n", **attrs)
    model = helper.make_model(helper.make_graph([node], "g", [x, w], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    graph = graph_from_onnx(model, name="g", source="test")
    return graph, node_cost(graph, graph.nodes[0])


def test_conv_flops_by_hand():
    """3x3 conv, 16 -> 32 channels, 8x8 input, stride 1, pad 1: 32·8·8 outputs × 16·3·3 MACs = 294,912;
    bytes = x (16·8·8·4) + w (32·16·9·4) + y (32·8·8·4)."""
    graph, cost = _one_node("Conv", [1, 16, 8, 8], [32, 16, 3, 3], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    assert graph.tensors["y"].shape == (1, 32, 8, 8)  # the symbolic batch became 1
    assert cost.macs == 32 * 8 * 8 * 16 * 9 == 294_912
    assert cost.flops == 2 * 294_912
    assert cost.param_bytes == 32 * 16 * 9 * 4
    assert cost.activation_bytes == (16 * 64 + 32 * 64) * 4


def test_depthwise_conv_flops_by_hand():
    """Depthwise 3x3 on 24 channels, 10x10, stride 2, pad 1 -> 5x5: 24·5·5 outputs × 9 MACs = 5,400."""
    _, cost = _one_node("Conv", [1, 24, 10, 10], [24, 1, 3, 3], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                        strides=[2, 2], group=24)
    assert cost.macs == 24 * 5 * 5 * 9 == 5_400


def test_gemm_and_matmul_flops_by_hand():
    """Gemm [1x512]·[1000x512]ᵀ: 512,000 MACs; batched MatMul [1,3,197,64]·[64,197]: 3·197·197·64."""
    _, gemm = _one_node("Gemm", [1, 512], [1000, 512], transB=1)
    assert gemm.macs == 512_000
    _, mm = _one_node("MatMul", [1, 3, 197, 64], [64, 197])
    assert mm.macs == 3 * 197 * 197 * 64


@pytest.mark.parametrize(("name", "published_macs", "rel"), [
    ("mobilenetv2", 300e6, 0.02),   # Sandler et al. 2018, Table 4: 300 M multiply-adds
    ("resnet18", 1.8e9, 0.02),      # He et al. 2016, Table 1: 1.8e9 FLOPs (multiply-adds)
    ("resnet50", 4.09e9, 0.02),     # torchvision model table, ResNet50_Weights.IMAGENET1K_V1: 4.09 GFLOPS
])
def test_bundled_graphs_match_published_counts(name, published_macs, rel):
    """Total multiply-adds of conv and fully connected layers against the published figure."""
    macs = sum(c.macs for c in graph_costs(load_graph(name)))
    assert macs == pytest.approx(published_macs, rel=rel)


def test_vit_tiny_against_closed_form():
    """ViT-Ti/16 (no published count at 2%): 12 × (4·197·192² + 2·197²·192 + 2·197·192·768) + patch
    embedding 196·192·768 + head 192·1000 multiply-adds, by hand; 5.72 M parameters (DeiT-Ti)."""
    t, d, m = 197, 192, 768
    expected = 12 * (4 * t * d * d + 2 * t * t * d + 2 * t * d * m) + 196 * d * 768 + d * 1000
    graph = load_graph("vit_tiny")
    assert sum(c.macs for c in graph_costs(graph)) == expected
    assert graph.param_bytes() / 4 == pytest.approx(5.72e6, rel=0.01)


def test_mobilenetv2_parameters():
    """Sandler et al. Table 4: 3.4 M parameters (here BN folded into conv biases: 3.49 M)."""
    assert load_graph("mobilenetv2").param_bytes() / 4 == pytest.approx(3.4e6, rel=0.03)


def test_onnx_file_round_trip(tmp_path):
    """A bundled graph saved to a file imports to the same costs."""
    import onnx

    model, _ = build_bundled("resnet18")
    onnx.save(model, tmp_path / "r18.onnx")
    from_file = graph_costs(load_graph(str(tmp_path / "r18.onnx")))
    assert [c.flops for c in from_file] == [c.flops for c in graph_costs(load_graph("resnet18"))]


def test_node_seconds_is_the_roofline():
    """A compute-bound conv on a device of 1e12 FLOP/s at 50% efficiency: fixed + FLOPs × batch / 5e11."""
    from paretoserve.catalog.device import load_device

    _, cost = _one_node("Conv", [1, 64, 56, 56], [64, 64, 3, 3], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    device = load_device("h100_sxm")
    eff = Efficiency(gemm=0.5, memory=1.0, kernel_latency_s=1e-6)
    seconds = node_seconds(cost, device, batch=4, dtype="fp32", eff=eff)
    compute = cost.flops * 4 / (device.peak_flops("fp32") * 0.5)
    memory = (cost.param_bytes + 4 * cost.activation_bytes) / device.mem_bandwidth
    assert seconds == pytest.approx(1e-6 + max(compute, memory))


def test_bad_models_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="unknown model 'mobilenetv9'.*mobilenetv2"):
        load_graph("mobilenetv9")
    with pytest.raises(UserError, match="ONNX file not found"):
        load_graph(str(tmp_path / "missing.onnx"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\xffnot a protobuf")
    with pytest.raises(UserError, match="not a readable ONNX model") as info:
        load_graph(str(bad))
    assert "\n" not in str(info.value)


def test_every_bundled_graph_loads():
    for name in BUNDLED:
        graph = load_graph(name)
        assert graph.nodes and graph.inputs == ("input",)
