"""Tensor-parallel all-reduce time by algorithm and link, chosen the way vLLM chooses it.

Every algorithm's time for a message of S bytes over `g` devices is

    base + per_peer × (g − 1) + x / efficiency + ramp × sqrt(x × 1 µs),   x = traffic(g) × S / B

where B is the one-direction bandwidth of the link the collective runs on (bytes/s) and
`traffic(g)` the bytes each device moves over it per message byte:

- ``oneshot`` (vLLM custom all-reduce, 1-stage): every rank reads the g − 1 peer buffers: g − 1.
- ``twoshot`` (custom all-reduce 2-stage, and torch symmetric-memory two-shot): reduce-scatter then
  all-gather, 2(g − 1)/g.
- ``nvls`` (torch symmetric-memory multimem one-shot on NVLink SHARP): the switch reduces, each
  device loads the reduced message once: 1.
- ``nccl_ring``: NCCL ring, 2(g − 1)/g.
- ``nccl_nvls``: NCCL NVLS (NVLink SHARP) on multicast-capable NVSwitch systems: 1.

The ``ramp`` term stands for NCCL's protocol and channel ramp-up (LL → LL128 → Simple, more channels
as messages grow), which makes mid-sized messages slower per byte than large ones; it is 0 for the
custom kernels. The constants in `ALGORITHMS` are fitted (`paretoserve.calibrate.comm_fit`,
relative least squares) on the H100 SXM tables shipped in shared/data/kernels/h100_sxm/comm: vLLM
0.24.0 `custom_allreduce_perf` (CUDA-graph rows; each row attributed to the algorithm vLLM's dispatch
picks for it) and NCCL 2.29.2 `nccl_perf` (all_reduce, fp16). They are expressed against the
datasheet link bandwidth, so the same constants serve other devices and links.

Dispatch (`vllm_algorithm`, vLLM V1 defaults, /work/shared/reference/engine_facts.md §3 "Custom
all-reduce and all-reduce dispatch"): custom all-reduce for world sizes 2/4/6/8 inside a node with
peer-to-peer access (more than 2 GPUs only with full NVLink / Infinity Fabric connectivity) and
messages below min(8 MiB, the per-SM cap); one-shot at world size 2 or below 512 KiB (g ≤ 4) /
256 KiB (g ≤ 8), two-shot otherwise. Then torch symmetric memory (bf16, multicast devices, per-SM
caps; multimem one-shot at g ∈ {4, 6, 8} on SM 9.0 and {6, 8} on SM 10.x, two-shot otherwise).
Then NCCL: NVLS on multicast devices for g ≥ 4, ring otherwise.

Links: within a node (g ≤ `devices_per_node`) the intra-node link; over PCIe without peer-to-peer
NCCL stages every transfer through host memory (SHM transport), which `NO_P2P_BANDWIDTH_FACTOR`
and `NO_P2P_LATENCY_S` model; wider than a node, NCCL's ring crosses the inter-node link (its
bandwidth, plus two inter-node latencies per extra node).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from paretoserve.catalog.device import DeviceSpec

KIB = 1024
MIB = 1024 * KIB

#: One microsecond: the time scale of the ramp term (seconds).
_RAMP_SCALE_S = 1e-6


@dataclass(frozen=True, slots=True)
class AlgorithmFit:
    """Constants of one all-reduce algorithm (see the module docstring for the formula).

    Attributes:
        base_s: fixed seconds per call.
        per_peer_s: seconds per additional device.
        efficiency: fraction of the link's one-direction bandwidth the transfer reaches.
        ramp: dimensionless weight of the sqrt(x × 1 µs) ramp-up term.
    """

    base_s: float
    per_peer_s: float
    efficiency: float
    ramp: float = 0.0


#: Fitted on the H100 SXM tables (see the module docstring; `calibrate.comm_fit.fit_algorithms`
#: reproduces these values, tests/test_comm.py checks that). Rows per algorithm: oneshot 36,
#: twoshot 7, nvls 10, nccl_ring 26, nccl_nvls 53.
ALGORITHMS: dict[str, AlgorithmFit] = {
    "oneshot": AlgorithmFit(4.25e-6, 0.08e-6, 0.600),
    "twoshot": AlgorithmFit(6.85e-6, 0.0, 0.529),
    "nvls": AlgorithmFit(9.39e-6, 0.0, 0.438),
    "nccl_ring": AlgorithmFit(5.82e-6, 0.0, 0.751, 4.14),
    "nccl_nvls": AlgorithmFit(4.10e-6, 1.68e-6, 0.578, 4.57),
}

def traffic(algorithm: str, gpus: int) -> float:
    """Link bytes per message byte of `algorithm` on `gpus` devices (module docstring)."""
    if algorithm == "oneshot":
        return float(gpus - 1)
    if algorithm in ("twoshot", "nccl_ring"):
        return 2.0 * (gpus - 1) / gpus
    if algorithm in ("nvls", "nccl_nvls"):
        return 1.0
    raise ValueError(f"unknown all-reduce algorithm {algorithm!r}")


# vLLM's size caps, bytes (engine_facts.md §3): custom all-reduce with symmetric memory on
# (CUSTOM_ALL_REDUCE_MAX_SIZES, clipped to the 8 MiB default max_size) and torch symmetric memory
# (SYMM_MEM_ALL_REDUCE_MAX_SIZES), by compute capability and world size.
CUSTOM_AR_MAX_BYTES = 8 * MIB
_CUSTOM_AR_CAPS: dict[str, dict[int, int]] = {
    "9.0": {2: 64 * MIB, 4: 32 * MIB, 6: 512 * KIB, 8: 256 * KIB},
    "10.0": {2: 2 * MIB, 4: 2 * MIB, 6: 1 * MIB, 8: 1 * MIB},
    "10.3": {2: 4 * MIB, 4: 4 * MIB, 6: 8 * MIB, 8: 4 * MIB},
}
_SYMM_MEM_CAPS: dict[str, dict[int, int]] = {
    "9.0": {2: 64 * MIB, 4: 32 * MIB, 6: 64 * MIB, 8: 64 * MIB},
    "10.0": {2: 8 * MIB, 4: 32 * MIB, 6: 128 * MIB, 8: 128 * MIB},
}
_MULTIMEM_WORLD_SIZES: dict[str, tuple[int, ...]] = {"9.0": (4, 6, 8), "10.0": (6, 8)}
_CUSTOM_AR_WORLD_SIZES = (2, 4, 6, 8)

#: Without peer-to-peer, NCCL's SHM transport copies each chunk device → host → device: half the
#: link bandwidth is the estimate used here (each byte crosses PCIe twice and a CPU proxy paces it).
NO_P2P_BANDWIDTH_FACTOR = 0.5
#: Extra seconds per all-reduce for the host staging (estimate: one PCIe round trip plus proxy
#: hand-off per ring step, a few µs each).
NO_P2P_LATENCY_S = 10e-6


@dataclass(frozen=True, slots=True)
class Plan:
    """How one all-reduce runs: the algorithm, the link bandwidth (bytes/s, one direction) it is
    charged against, and extra fixed seconds for that link."""

    algorithm: str
    bandwidth: float
    extra_s: float = 0.0


def _full_mesh(device: DeviceSpec) -> bool:
    """Every GPU of the node reaches every other over NVLink / Infinity Fabric."""
    return device.intra_node_link in ("nvlink", "xgmi")


def vllm_algorithm(device: DeviceSpec, gpus: int, nbytes: float) -> str:
    """The algorithm vLLM V1 runs for an all-reduce of `nbytes` over `gpus` devices of one node."""
    cc = device.compute_capability
    if gpus in _CUSTOM_AR_WORLD_SIZES and device.peer_to_peer and (gpus == 2 or _full_mesh(device)):
        cap = min(CUSTOM_AR_MAX_BYTES, _CUSTOM_AR_CAPS.get(cc, {}).get(gpus, CUSTOM_AR_MAX_BYTES))
        if nbytes < cap:
            one_shot = gpus == 2 or (_full_mesh(device) and (
                (gpus <= 4 and nbytes < 512 * KIB) or (gpus <= 8 and nbytes < 256 * KIB)))
            return "oneshot" if one_shot else "twoshot"
    symm_cap = _SYMM_MEM_CAPS.get(cc, {}).get(gpus, 0)
    if device.nvlink_multicast and nbytes < symm_cap:
        return "nvls" if gpus in _MULTIMEM_WORLD_SIZES.get(cc, ()) else "twoshot"
    return nccl_algorithm(device, gpus)


def nccl_algorithm(device: DeviceSpec, gpus: int) -> str:
    """NCCL's all-reduce algorithm within a node: NVLS on multicast NVSwitch systems from 4 GPUs."""
    return "nccl_nvls" if device.nvlink_multicast and gpus >= 4 else "nccl_ring"


def plan(device: DeviceSpec, gpus: int, nbytes: float, engine: str = "vllm") -> Plan:
    """Algorithm and link of an all-reduce of `nbytes` over `gpus` devices (`engine` "vllm" or "nccl")."""
    if gpus > device.devices_per_node:
        nodes = math.ceil(gpus / device.devices_per_node)
        return Plan("nccl_ring", device.inter_node_bandwidth, 2.0 * (nodes - 1) * device.inter_node_latency)
    algorithm = vllm_algorithm(device, gpus, nbytes) if engine == "vllm" else nccl_algorithm(device, gpus)
    if device.peer_to_peer:
        return Plan(algorithm, device.intra_node_bandwidth)
    return Plan(algorithm, device.intra_node_bandwidth * NO_P2P_BANDWIDTH_FACTOR, NO_P2P_LATENCY_S)


def algorithm_seconds(fit: AlgorithmFit, algorithm: str, gpus: int, nbytes: float, bandwidth: float) -> float:
    """Seconds of one all-reduce by `algorithm` with constants `fit` over a link of `bandwidth`."""
    x = traffic(algorithm, gpus) * nbytes / bandwidth
    return (fit.base_s + fit.per_peer_s * (gpus - 1) + x / fit.efficiency
            + fit.ramp * math.sqrt(x * _RAMP_SCALE_S))


def allreduce_seconds(device: DeviceSpec, gpus: int, nbytes: float, *, engine: str = "vllm",
                      fits: dict[str, AlgorithmFit] | None = None) -> float:
    """Seconds of one all-reduce of `nbytes` bytes over `gpus` devices of kind `device` (0 for one)."""
    if gpus <= 1 or nbytes <= 0:
        return 0.0
    p = plan(device, gpus, nbytes, engine)
    fit = (fits or ALGORITHMS)[p.algorithm]
    return p.extra_s + algorithm_seconds(fit, p.algorithm, gpus, nbytes, p.bandwidth)
