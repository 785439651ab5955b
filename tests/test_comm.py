"""All-reduce times of perf/comm.py: hand calculations, vLLM's dispatch thresholds, measured table rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from paretoserve.calibrate import comm_fit
from paretoserve.calibrate.kernel_tables import load_kernel_table
from paretoserve.catalog.device import load_device
from paretoserve.catalog.model import load_model
from paretoserve.perf import comm
from paretoserve.perf.overhead import cudagraph_tokens
from paretoserve.perf.roofline import Roofline, pp_inter_node_hops
from paretoserve.perf.shape import StepShape

KERNELS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kernels"
H100, A100, H100_PCIE, RTX4090 = (load_device(n) for n in ("h100_sxm", "a100_sxm", "h100_pcie", "rtx_4090"))
KIB, MIB = 1024, 1024 * 1024
needs_tables = pytest.mark.skipif(not KERNELS.is_dir(), reason="shared/data/kernels not present")


def test_one_shot_by_hand():
    """TP2, 8 KiB over H100 NVLink (450e9 B/s): one-shot reads 1 peer buffer;
    4.25 µs + 0.08 µs + 8192 / (450e9 × 0.600) = 4.36 µs."""
    expected = 4.25e-6 + 0.08e-6 + 8192 / (450e9 * 0.600)
    assert comm.allreduce_seconds(H100, 2, 8192) == pytest.approx(expected, rel=1e-12)


def test_nccl_ring_by_hand():
    """TP4 over PCIe Gen5 with P2P (64e9 B/s), 64 MiB: vLLM disables custom all-reduce above 2 GPUs
    without NVLink, so NCCL ring: x = 2·3/4 × 64 MiB / 64e9; t = 5.82 µs + x / 0.751 + 4.14·sqrt(x·1 µs)."""
    size = 64 * MIB
    x = 1.5 * size / 64e9
    expected = 5.82e-6 + x / 0.751 + 4.14 * (x * 1e-6) ** 0.5
    assert comm.vllm_algorithm(H100_PCIE, 4, size) == "nccl_ring"
    assert comm.allreduce_seconds(H100_PCIE, 4, size) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("gpus, below, at, algo_below, algo_at", [
    (4, 512 * KIB - 2, 512 * KIB, "oneshot", "twoshot"),   # one-shot below 512 KiB at ws <= 4
    (8, 256 * KIB - 2, 256 * KIB, "oneshot", "nvls"),      # SM 9.0 custom AR cap 256 KiB at ws 8
    (4, 8 * MIB - 2, 8 * MIB, "twoshot", "nvls"),          # 8 MiB custom AR max_size, then multimem
    (8, 64 * MIB - 2, 64 * MIB, "nvls", "nccl_nvls"),      # SM 9.0 symm-mem cap 64 MiB at ws 8
    (2, 8 * MIB - 2, 8 * MIB, "oneshot", "twoshot"),       # ws 2: one-shot always, then symm two-shot
    (2, 64 * MIB - 2, 64 * MIB, "twoshot", "nccl_ring"),
])
def test_vllm_dispatch_at_thresholds(gpus, below, at, algo_below, algo_at):
    """vLLM's thresholds on H100 (engine_facts.md §3 "Custom all-reduce and all-reduce dispatch")."""
    assert comm.vllm_algorithm(H100, gpus, below) == algo_below
    assert comm.vllm_algorithm(H100, gpus, at) == algo_at


def test_a100_has_no_multicast_path():
    """SM 8.0: custom AR up to 8 MiB (one-shot < 256 KiB at ws 8), then NCCL ring (no NVLS)."""
    assert comm.vllm_algorithm(A100, 8, 128 * KIB) == "oneshot"
    assert comm.vllm_algorithm(A100, 8, 1 * MIB) == "twoshot"
    assert comm.vllm_algorithm(A100, 8, 16 * MIB) == "nccl_ring"


def test_pcie_without_p2p_is_slower_than_with():
    """RTX 4090 (GeForce: no P2P) vs the same card with P2P: NCCL through host memory is slower at
    every size, and TP2 loses the custom all-reduce."""
    with_p2p = RTX4090.model_copy(update={"peer_to_peer": True})
    assert comm.vllm_algorithm(RTX4090, 2, 16 * KIB) == "nccl_ring"
    assert comm.vllm_algorithm(with_p2p, 2, 16 * KIB) == "oneshot"
    for size in (16 * KIB, 1 * MIB, 64 * MIB):
        assert comm.allreduce_seconds(RTX4090, 2, size) > comm.allreduce_seconds(with_p2p, 2, size)
    # Large messages: exactly the bandwidth factor on the transfer term.
    big = 1024 * MIB
    ratio = comm.allreduce_seconds(RTX4090, 2, big) / comm.allreduce_seconds(with_p2p, 2, big, engine="nccl")
    assert 1.6 < ratio < 1 / comm.NO_P2P_BANDWIDTH_FACTOR + 0.01


def test_tp_wider_than_a_node_uses_the_inter_node_link():
    """TP16 on 8-GPU H100 nodes: NCCL ring over the 50e9 B/s NIC share plus 2 inter-node latencies,
    by hand, and slower than TP8 inside the node."""
    size = 16 * MIB
    x = 2 * 15 / 16 * size / 50e9
    expected = 2 * 20e-6 + 5.82e-6 + x / 0.751 + 4.14 * (x * 1e-6) ** 0.5
    assert comm.allreduce_seconds(H100, 16, size) == pytest.approx(expected, rel=1e-12)
    assert comm.allreduce_seconds(H100, 16, size) > 3 * comm.allreduce_seconds(H100, 8, size)


@needs_tables
def test_measured_rows_of_the_custom_allreduce_table():
    """h100_sxm/comm/vllm/0.24.0/custom_allreduce_perf.parquet, vllm_graph rows (message_size in
    elements, bf16): TP8 × 4096 elements (8 KiB) = 5.108 µs, TP8 × 4194304 (8 MiB) = 50.70 µs,
    TP2 × 65536 (128 KiB) = 4.751 µs; the model is within 8% of each."""
    table = load_kernel_table(KERNELS / comm_fit.FIT_TABLES[0], "allreduce")
    rows = {(int(g), int(s)): t for g, s, t in zip(table.shape["num_gpus"], table.shape["message_size"],
                                                    table.latency_s, strict=True)}
    for gpus, elements, measured in ((8, 4096, 5.108e-6), (8, 4194304, 50.70e-6), (2, 65536, 4.751e-6)):
        nbytes = elements * 2
        assert rows[(gpus, nbytes)] == pytest.approx(measured, rel=1e-3)  # loaded as bytes
        assert comm.allreduce_seconds(H100, gpus, nbytes) == pytest.approx(measured, rel=0.08)


@needs_tables
def test_measured_rows_of_the_nccl_table():
    """h100_sxm/comm/nccl/2.29.2/nccl_perf.parquet all_reduce half: TP8 × 268435456 elements
    (512 MiB) = 2111.06 µs, TP2 × 1024 elements = 6.32 µs; the model is within 12%."""
    table = load_kernel_table(KERNELS / comm_fit.FIT_TABLES[1], "allreduce")
    rows = {(int(g), int(s)): t for g, s, t in zip(table.shape["num_gpus"], table.shape["message_size"],
                                                    table.latency_s, strict=True)}
    for gpus, elements, measured in ((8, 268435456, 2111.06e-6), (2, 1024, 6.32e-6)):
        assert rows[(gpus, elements * 2)] == pytest.approx(measured, rel=1e-3)
        assert comm.allreduce_seconds(H100, gpus, elements * 2, engine="nccl") == pytest.approx(measured, rel=0.12)


@needs_tables
def test_shipped_constants_are_the_fit_of_the_shipped_tables():
    """comm.ALGORITHMS equals what calibrate.comm_fit gives on the tables it names (to the rounding
    of the literals), and the leave-one-out error stays small (median < 5%)."""
    tables = comm_fit.load_fit_tables(KERNELS)
    fits = comm_fit.fit_algorithms(tables, H100)
    assert set(fits) == set(comm.ALGORITHMS)
    for name, fit in fits.items():
        shipped = comm.ALGORITHMS[name]
        assert shipped.base_s == pytest.approx(fit.base_s, abs=0.01e-6)
        assert shipped.per_peer_s == pytest.approx(fit.per_peer_s, abs=0.01e-6)
        assert shipped.efficiency == pytest.approx(fit.efficiency, abs=1e-3)
        assert shipped.ramp == pytest.approx(fit.ramp, abs=0.01)
    assert np.median(np.abs(comm_fit.leave_one_out(tables, H100))) < 0.05


def test_cudagraph_padding_to_capture_sizes():
    """vLLM capture list [1, 2, 4] + range(8, 256, 8) + range(256, 513, 16) (engine_facts.md §3)."""
    assert [cudagraph_tokens(t, 512) for t in (1, 3, 5, 9, 249, 257, 512)] == [1, 4, 8, 16, 256, 272, 512]
    assert cudagraph_tokens(513, 512) == 513  # eager above the largest capture size
    assert cudagraph_tokens(3, 0) == 3  # padding off


def test_roofline_allreduce_op_and_fast_path():
    """Llama-3.1-70B TP8 on H100, 3 decodes (padded to 4 tokens): 160 all-reduces (80 layers ×
    attention + MLP) of 4 × 8192 × 2 bytes, one-shot; decode_run_seconds is the sum of decode_seconds."""
    rf = Roofline(load_model("meta-llama/Llama-3.1-70B"), H100, tp=8)
    ops = {op.name: op for op in rf.step_time(StepShape(decode=(100, 200, 300))).ops}
    per_call = comm.allreduce_seconds(H100, 8, 4 * 8192 * 2)
    assert comm.vllm_algorithm(H100, 8, 4 * 8192 * 2) == "oneshot"
    assert ops["tp.allreduce"].seconds == pytest.approx(160 * per_call, rel=1e-12)
    assert rf.decode_seconds(3, 600) == pytest.approx(rf.step_time(StepShape(decode=(100, 200, 300))).seconds,
                                                      rel=1e-12)
    for n, ctx, k in ((3, 600, 50), (200, 200 * 900, 30)):
        stepped = sum(rf.decode_seconds(n, ctx + i * n) for i in range(k))
        assert rf.decode_run_seconds(n, ctx, k) == pytest.approx(stepped, rel=1e-9)


def test_pipeline_hops_cross_nodes():
    """TP4 × PP4 on 8-GPU nodes: stages 0-1 on node 0, 2-3 on node 1: one of three hops crosses."""
    assert pp_inter_node_hops(4, 4, 8) == 1
    assert pp_inter_node_hops(8, 2, 8) == 1
    assert pp_inter_node_hops(2, 4, 8) == 0


def test_windowed_fast_path_with_allreduce():
    """gpt-oss-20b (sliding-window layers) at TP2: the segment path of decode_run_seconds still sums
    decode_seconds exactly with the per-step all-reduce and CUDA-graph padding (n = 5 -> 8 tokens)."""
    rf = Roofline(load_model("gpt-oss-20b"), H100, tp=2)
    assert [(ar.blocks, ar.gpus, ar.token_scale) for ar in rf.allreduces] == [(2 * 24, 2, 1.0)]
    for n, ctx, k in ((5, 5 * 60, 200), (300, 300 * 50, 20)):
        stepped = sum(rf.decode_seconds(n, ctx + i * n) for i in range(k))
        assert rf.decode_run_seconds(n, ctx, k) == pytest.approx(stepped, rel=1e-9)
