"""The partition model against ParetoPipe's measured MobileNetV2 splits on two Raspberry Pis
(../shared/data/edge/paretopipe_mobilenetv2_rpi.csv). One number is fitted — the Pi's effective
compute rate, on split block 8's pipelined row — and the other rows are predictions.

Result at the time of writing (raspberry_pi_4 on GbE, MobileNetV2 at 224×224, batch 8, 3 in flight):
fitted efficiency 10.2% of the 48 GFLOP/s estimate (~4.9 GFLOP/s). Held-out pipelined rows, predicted
vs measured images/s: block 6 12.05 vs 12.68 (−5%), block 10 15.11 vs 13.46 (+12%), block 12 13.83 vs
12.66 (+9%), block 17 9.04 vs 13.85 (−35%). Spearman rank correlation over the five blocks −0.3: the
model does not reproduce the measured order. Block 17 puts 85% of the FLOPs on the first Pi, so the
roofline makes it the slowest split; the measurement makes it the fastest. Sequential at block 8:
predicted 7.74 vs measured 2.17 images/s (+257%): a two-stage chain can at most double throughput
when pipelined, and the measured 6.2× speed-up is outside what a stage model explains (the source's
own note gives 460 ms per batch sequentially, i.e. ~17 images/s, so its sequential figures disagree
with each other). The source's "split ratio" column matches the graph's parameter share of the first
side (not its FLOP share) to 0.2 points: that is what its split analysis balanced.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from paretoserve.calibrate.edge_fit import check_paretopipe

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "edge" / "paretopipe_mobilenetv2_rpi.csv"


@pytest.fixture(scope="module")
def check():
    if not DATA.exists():
        pytest.skip(f"{DATA} not present")
    return check_paretopipe(DATA, fit_block=8)


def _row(check, block, mode="pipelined"):
    return next(r for r in check.rows if r.block == block and r.mode == mode)


def test_the_fit_reproduces_its_own_row(check):
    assert _row(check, 8).error == pytest.approx(0.0, abs=1e-6)
    assert 0.05 < check.efficiency < 0.2  # PyTorch fp32 on a Pi reaches ~10% of the NEON peak estimate


def test_held_out_splits_near_the_fit_are_within_15_percent(check):
    """Blocks 6, 10 and 12 (34-55% of the FLOPs on the first Pi) are predicted within 15%."""
    for block in (6, 10, 12):
        assert abs(_row(check, block).error) < 0.15, block


def test_known_misses_are_stated(check):
    """Block 17 is under-predicted by more than 25%, the sequential row over-predicted by more than 2×,
    and the rank order is not reproduced (see the module docstring)."""
    assert _row(check, 17).error < -0.25
    assert _row(check, 8, "sequential").error > 2.0
    assert check.spearman < 0.5
    held_out = check.held_out()
    assert len(held_out) == 5 and all(r.block != 8 or r.mode == "sequential" for r in held_out)


def test_source_split_ratio_is_the_parameter_share(check):
    """The CSV's split_ratio_first_pct equals the first side's share of the feature extractor's
    parameters (independent of any fit) within 0.5 points, and is far from the FLOP share."""
    for r in check.rows:
        assert r.param_share_pct == pytest.approx(r.source_ratio_pct, abs=0.5)
        assert abs(r.flop_share_pct - r.source_ratio_pct) > 20
