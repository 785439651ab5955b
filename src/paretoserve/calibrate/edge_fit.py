"""The partition model against ParetoPipe's measurements (MobileNetV2 split over two Raspberry Pis).

`../shared/data/edge/paretopipe_mobilenetv2_rpi.csv` (see shared/data/SOURCES.md) holds throughput
per split block, pipelined (up to 3 batches in flight) and sequential, batch 8. One number is fitted:
the Pi's effective compute rate (the roofline's compute efficiency), so that the predicted pipelined
throughput of one split (`fit_block`) equals its measurement; every other row is a prediction.

Assumptions, stated: the source does not name the Pi model, the input resolution or the link, so the
workers are `raspberry_pi_4` on Gigabit Ethernet and the graph is MobileNetV2 at 224×224 (CIFAR-10
images resized, 1000-class head; the fitted rate absorbs the resolution); split block k means
features[:k] on the first worker. The source's "split ratio" column is compared with the graph's
parameter share and FLOP share of the first side.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import brentq
from scipy.stats import spearmanr

from paretoserve.catalog.device import load_device
from paretoserve.catalog.dnn_graph import load_graph
from paretoserve.catalog.links import load_link
from paretoserve.errors import UserError
from paretoserve.perf.dnn_cost import graph_costs
from paretoserve.perf.roofline import Efficiency
from paretoserve.plan.partition import Partition, evaluate_partitions
from paretoserve.textfiles import read_text

BATCH = 8
IN_FLIGHT = 3


@dataclass(frozen=True, slots=True)
class SplitCheck:
    """One split block: measured and predicted images/s (pipelined; sequential where measured)."""

    block: int
    mode: str
    measured: float
    predicted: float
    source_ratio_pct: float
    param_share_pct: float
    flop_share_pct: float

    @property
    def error(self) -> float:
        """(predicted − measured) / measured."""
        return (self.predicted - self.measured) / self.measured


@dataclass(frozen=True, slots=True)
class EdgeCheck:
    """The fitted efficiency, every row's check, and the rank agreement over the pipelined splits."""

    efficiency: float
    fit_block: int
    rows: tuple[SplitCheck, ...]
    spearman: float

    def held_out(self) -> list[SplitCheck]:
        """Rows that were not used for the fit."""
        return [r for r in self.rows if not (r.block == self.fit_block and r.mode == "pipelined")]


def _measurements(path: Path) -> dict[tuple[int, str], tuple[float, float]]:
    """(block, mode) -> (mean images/s over repeats, source split ratio %)."""
    values: dict[tuple[int, str], list[float]] = {}
    ratios: dict[int, float] = {}
    for row in csv.DictReader(io.StringIO(read_text(path))):
        try:
            key = (int(row["split_block"]), row["mode"])
            values.setdefault(key, []).append(float(row["throughput_images_per_s"]))
            ratios[key[0]] = float(row["split_ratio_first_pct"])
        except (KeyError, TypeError, ValueError):
            raise UserError("expected columns split_block, split_ratio_first_pct, mode, "
                            "throughput_images_per_s with numbers", file=str(path)) from None
    return {k: (float(np.mean(v)), ratios[k[0]]) for k, v in values.items()}


def check_paretopipe(path: str | Path, *, fit_block: int = 8, device: str = "raspberry_pi_4",
                     link: str = "gbe", efficiency: float | None = None) -> EdgeCheck:
    """Fit the compute efficiency on `fit_block`'s pipelined row and predict the rest (or, with
    `efficiency`, predict every row at that fraction of peak: the datasheet baseline)."""
    measured = _measurements(Path(path))
    if (fit_block, "pipelined") not in measured:
        raise UserError(f"no pipelined row for split block {fit_block}", file=str(path))
    graph = load_graph("mobilenetv2")
    pi = load_device(device)
    links = [load_link(link)]

    def by_block(efficiency: float) -> dict[int, Partition]:
        parts = evaluate_partitions(graph, [pi, pi], links, batch=BATCH, in_flight=IN_FLIGHT,
                                    efficiency=Efficiency(gemm=efficiency), fixed_order=True)
        return {int(p.splits[0].block.split(".")[1]): p for p in parts if p.splits[0].block.startswith("features.")}

    target = measured[(fit_block, "pipelined")][0]
    if efficiency is None:
        efficiency = brentq(lambda e: by_block(e)[fit_block].throughput_pipelined - target, 1e-5, 1.0, xtol=1e-9)
    predicted = by_block(efficiency)
    costs = graph_costs(graph)
    index = {int(p.splits[0].block.split(".")[1]): p.splits[0].index for p in predicted.values()}
    features = [c for c, n in zip(costs, graph.nodes, strict=True) if n.name.startswith("features.")]
    total_params = sum(c.param_bytes for c in features)
    total_flops = sum(c.flops for c in costs)
    rows = []
    for (block, mode), (value, ratio) in sorted(measured.items()):
        part = predicted[block]
        first = costs[:index[block]]
        rows.append(SplitCheck(block, mode, value, part.throughput(mode), ratio,
                               100 * sum(c.param_bytes for c in first) / total_params,
                               100 * sum(c.flops for c in first) / total_flops))
    pipelined = [r for r in rows if r.mode == "pipelined"]
    rho = spearmanr([r.measured for r in pipelined], [r.predicted for r in pipelined]).statistic
    return EdgeCheck(float(efficiency), fit_block, tuple(rows), float(rho))
