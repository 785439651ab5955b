"""Pipeline simulation and DNN partitioning: throughput = batch / slowest stage (transfers included)
when pipelined, latency = Σ stages + transfers, sequential = Σ; hand-computed stage times of a real
split; the front against brute-force dominance."""

from __future__ import annotations

import numpy as np
import pytest

from paretoserve.catalog.device import load_device
from paretoserve.catalog.dnn_graph import load_graph
from paretoserve.catalog.links import load_link
from paretoserve.errors import UserError
from paretoserve.perf.dnn_cost import graph_costs, node_seconds
from paretoserve.perf.roofline import Efficiency
from paretoserve.plan.partition import best_throughput, evaluate_partitions, front, split_points
from paretoserve.sim.dnn_pipeline import simulate_pipelines


def _constant(times, batches=20):
    return np.repeat(np.asarray(times, dtype=float)[:, None, :], batches, axis=1)


def test_pipeline_throughput_latency_by_hand():
    """Stage 0.1 s, transfer 0.05 s, stage 0.3 s. Pipelined with 3 in flight: period = slowest = 0.3 s;
    sequential: period = 0.1 + 0.05 + 0.3 = 0.45 s. Two in flight on three 0.1 s resources: the
    window binds, period = 0.3 / 2 = 0.15 s."""
    run = simulate_pipelines(_constant([[0.1, 0.05, 0.3], [0.1, 0.1, 0.1]]), in_flight=3)
    assert run.period_s == pytest.approx([0.3, 0.1])
    assert simulate_pipelines(_constant([[0.1, 0.05, 0.3]]), in_flight=1).period_s == pytest.approx([0.45])
    assert simulate_pipelines(_constant([[0.1, 0.1, 0.1]]), in_flight=2).period_s == pytest.approx([0.15])
    # The first batch leaves after Σ = 0.45 s; 20 batches pipelined: 0.45 + 19 × 0.3.
    assert run.makespan_s[0] == pytest.approx(0.45 + 19 * 0.3)


def test_a_resnet18_split_by_hand():
    """ResNet-18 over two Pi 5s on a constant 100 Mb/s, 1 ms link, batch 4: stage times are the sums
    of the nodes' roofline seconds, the transfer is 1 ms + 4 × bytes / 12.5e6 B/s."""
    graph, pi5 = load_graph("resnet18"), load_device("pi5")
    link = load_link("100Mbps@1ms")
    eff = Efficiency(gemm=0.1)
    parts = evaluate_partitions(graph, [pi5, pi5], [link], batch=4, efficiency=eff)
    split = next(p for p in parts if p.splits[0].block == "layer3.0")
    costs = graph_costs(graph)
    k = split.splits[0].index
    first = sum(node_seconds(c, pi5, batch=4, eff=eff) for c in costs[:k])
    second = sum(node_seconds(c, pi5, batch=4, eff=eff) for c in costs[k:])
    transfer = 1e-3 + 4 * (128 * 28 * 28 * 4) / 12.5e6  # layer2's output: 128 × 28 × 28 fp32
    assert split.stage_s == pytest.approx((first, second))
    assert split.transfer_s == pytest.approx((transfer,))
    assert split.latency_s == pytest.approx(first + transfer + second)
    assert split.throughput_pipelined == pytest.approx(4 / max(first, transfer, second))
    assert split.throughput_sequential == pytest.approx(4 / (first + transfer + second))


def test_split_points_of_mobilenetv2_are_its_blocks():
    """torchvision's features.1 … features.18, avgpool, flatten, classifier.1: 21 block boundaries."""
    blocks = [p.block for p in split_points(load_graph("mobilenetv2"))]
    assert blocks == [f"features.{i}" for i in range(1, 19)] + ["avgpool", "flatten", "classifier.1"]
    assert len(split_points(load_graph("mobilenetv2"), "layers")) > len(blocks)


def test_front_is_non_dominated_against_brute_force():
    devices = [load_device("pi5"), load_device("pi4"), load_device("jetson_orin_nx")]
    links = [load_link("wifi6"), load_link("gbe")]
    parts = evaluate_partitions(load_graph("mobilenetv2"), devices, links, batch=8)
    assert len(parts) == 21 * 20 // 2 * 6  # C(21, 2) splits × 3! orders
    best = front(parts)
    objectives = [(p.latency_s, -p.throughput_pipelined, p.energy_j_pipelined) for p in parts]

    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b, strict=True)) and a != b

    on_front = {id(p) for p in best}
    for p, obj in zip(parts, objectives, strict=True):
        beaten = any(dominates(o, obj) for o in objectives)
        assert beaten != (id(p) in on_front)
    assert best_throughput(parts) in best


def test_a_slower_link_never_raises_the_best_throughput():
    graph = load_graph("resnet50")
    devices = [load_device("pi5"), load_device("pi5")]
    rates = {s: best_throughput(evaluate_partitions(graph, devices, [load_link("5g")], batch=8, scenario=s))
             .throughput_pipelined for s in ("p10", "p50", "p90")}
    assert rates["p10"] <= rates["p50"] <= rates["p90"]


def test_bad_partition_requests():
    graph, pi5 = load_graph("mobilenetv2"), load_device("pi5")
    with pytest.raises(UserError, match="2 device\\(s\\) need 1 link"):
        evaluate_partitions(graph, [pi5, pi5], [])
    with pytest.raises(UserError, match="expected blocks or layers"):
        evaluate_partitions(graph, [pi5, pi5], [load_link("gbe")], cuts="rows")
