"""Layout fronts (`paretoserve.calibrate.fronts`): family grouping, tokens/s/GPU, rank agreement and
the best-layout check, on the real H100 rows of shared/data/silicon (picked by id) and hand
calculations written out in each docstring."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from paretoserve.calibrate.fronts import (FamilyKey, compare_fronts, families, family_front, layout_label,
                                          rank_agreement, tokens_per_s_per_gpu)
from paretoserve.calibrate.point_replay import PointPrediction
from paretoserve.calibrate.points import PointDeployment, map_row, read_points
from paretoserve.perf.layout import ParallelLayout

POINTS = next((p for p in (Path(__file__).resolve().parents[k] / "shared" / "data" / "silicon" /
                           "h100_sxm_silicon.csv" for k in (2, 3)) if p.exists()), None)
pytestmark = pytest.mark.skipif(POINTS is None, reason="shared/data/silicon not next to the checkout")

TP2_C8 = "qwen_qwen3_32b_qwen_qwen3_32b_h100_sxm_vllm_agg_1024x1024_c8_tp2_epnone_31"
TP4_C8 = "qwen_qwen3_32b_qwen_qwen3_32b_h100_sxm_vllm_agg_1024x1024_c8_tp4_epnone_32"
EP4 = "2026_03_25_minimax_m2_5_h100_sxm_vllm_fp8_agg_1024x1024_c32_tp4_0_ep4_0_245"
ADP = "2026_04_06_minimax_m2_5_h100_sxm_vllm_fp8_agg_1024x1024_c32_tp4_ep4_1342"
QWEN = FamilyKey("Qwen/Qwen3-32B", "vllm", "h100_sxm", 1024, 1024, "bf16")


@pytest.fixture(scope="module")
def points() -> dict[str, PointDeployment]:
    assert POINTS is not None
    return {row["id"]: map_row(row, line, str(POINTS)) for line, row in read_points(POINTS)}


def as_measured(items: list[PointDeployment]) -> list[PointPrediction]:
    """Predictions equal to the measurements (a perfect model)."""
    return [PointPrediction(p, p.measured_ttft_s, p.measured_tpot_s) for p in items]


def figure(point: PointDeployment, gpus: int) -> float:
    return tokens_per_s_per_gpu(point.concurrency, point.osl, point.measured_ttft_s, point.measured_tpot_s, gpus)


def test_tokens_per_s_per_gpu_by_hand(points: dict[str, PointDeployment]) -> None:
    """Rows 617, 618, 712 and 869 of the CSV, C · OSL / (TTFT + (OSL − 1) · TPOT) / GPUs by hand:
    TP2 C8: 8·1024 / (0.154343741 + 1023 · 0.0159005368625) / 2 = 8192 / 16.42059 / 2 = 249.44;
    TP4 C8: 8192 / (0.129806150 + 1023 · 0.0105963876) / 4 = 8192 / 10.96992 / 4 = 186.69;
    MiniMax TP4 EP4, C32 on 4 GPUs: 32768 / (0.141388 + 1023 · 0.0200214) / 4 = 397.22;
    MiniMax TP4 DP4 EP16, batch 8 × DP 4 = C32 on 16 GPUs: 32768 / (0.143579 + 1023 · 0.0200364) / 16 = 99.22."""
    assert figure(points[TP2_C8], 2) == pytest.approx(249.44, abs=0.01)
    assert figure(points[TP4_C8], 4) == pytest.approx(186.69, abs=0.01)
    assert points[ADP].concurrency == 32
    assert figure(points[EP4], 4) == pytest.approx(397.22, abs=0.01)
    assert figure(points[ADP], 16) == pytest.approx(99.22, abs=0.01)


def test_families_group_layouts_of_a_model_and_lengths(points: dict[str, PointDeployment]) -> None:
    """The CSV's vLLM Qwen3-32B 1024/1024 rows (lines 617–631): TP 2/4/8 at C 8–128, five points each,
    one family (the dense rows' moe_tp/moe_ep columns of 1 do not split it); the MiniMax-M2.5 1024/1024
    vLLM rows: TP4 EP4 (EP4 rows of two dumps) and TP4 DP4 EP16 (experts over attention-DP 4 × TP4 = 16
    GPUs), five concurrencies each."""
    grouped = families(as_measured(list(points.values())))
    qwen = grouped[QWEN]
    assert {layout_label(k): len(v) for k, v in qwen.items()} == {"TP2": 5, "TP4": 5, "TP8": 5}
    assert {p.point.concurrency for p in qwen[ParallelLayout(tp=2)]} == {8, 16, 32, 64, 128}
    minimax = grouped[FamilyKey("MiniMaxAI/MiniMax-M2.5", "vllm", "h100_sxm", 1024, 1024, "fp8")]
    assert sorted(layout_label(k) for k in minimax) == ["TP4 DP4 EP16", "TP4 EP4"]
    assert all(len(k) >= 2 for k in grouped.values())
    assert all(key.isl and key.hardware == "h100_sxm" for key in grouped)


def test_front_of_a_perfect_model(points: dict[str, PointDeployment]) -> None:
    """Qwen3-32B vLLM 1024/1024 with predictions equal to the measurements: the target is the median
    of the 15 measured TPOTs, 15.9005 ms (row 617's, TP2 C8); TP2's only point meeting it is row 617
    (249.44 tok/s/GPU, its other TPOTs 17.4–37.8 ms); the ranking is TP8 > TP4 > TP2 both ways
    (Spearman 1) and the recommendation is the measured best."""
    grouped = families(as_measured(list(points.values())))
    front = family_front(QWEN, grouped[QWEN])
    assert front.tpot_target_s == pytest.approx(0.0159005368625)
    assert [f.label for f in front.layouts] == ["TP8", "TP4", "TP2"]
    assert front.layouts[2].measured == pytest.approx(249.44, abs=0.01)
    assert front.spearman == pytest.approx(1.0)
    assert front.recommended == front.measured_best == "TP8"
    assert front.best_gap == 0.0 and front.best_ok


def test_wrong_recommendation_is_caught(points: dict[str, PointDeployment]) -> None:
    """Same family, the TP2 predictions made 10× faster in TTFT and TPOT: every TP2 point now meets the
    target and TP2 ranks first on the predicted side, so the recommendation is TP2, whose measured
    figure (249.44) is 249.44 / 595.18 − 1 = −58% of the measured best (TP8, 595.18 tok/s/GPU)."""
    family = [p for group in families(as_measured(list(points.values())))[QWEN].values() for p in group]
    fast = [dataclasses.replace(p, ttft_s=p.ttft_s / 10, tpot_s=p.tpot_s / 10)
            if p.point.roles[0].tp == 2 else p for p in family]
    (front,) = compare_fronts(fast)
    assert front.recommended == "TP2" and front.measured_best == "TP8"
    assert front.best_gap == pytest.approx(249.44 / 595.18 - 1, abs=1e-3)
    assert not front.best_ok
    assert front.spearman == pytest.approx(-0.5)  # measured ranks (3, 2, 1) vs predicted (2, 1, 3)


def test_rank_agreement_by_hand() -> None:
    """rho = 1 − 6 Σd² / (n(n² − 1)): ranks (1,2,3,4) vs (1,3,2,4) → d² = 0+1+1+0 → 1 − 12/60 = 0.8;
    a reversed order → −1; a constant side has no ranking (None)."""
    assert rank_agreement([10, 20, 30, 40], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert rank_agreement([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    assert rank_agreement([5, 5, 5], [1, 2, 3]) is None
