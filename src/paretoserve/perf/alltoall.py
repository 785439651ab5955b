"""Expert-parallel dispatch / combine all-to-all: seconds per MoE layer.

Dispatch sends each (token, expert) selection to the rank holding the expert, in FP8 with scales:
hidden + hidden / 128 × 4 + 16 bytes per selection; combine returns BF16 expert outputs, 2 × hidden
bytes per selection (DeepEP's accounting, engine_facts.md §2). With uniform placement a fraction
(ep − 1) / ep of a rank's selections leaves the rank, so one phase moves

    bytes = tokens per rank × top_k × bytes per selection × (ep − 1) / ep

and takes latency + bytes / bandwidth. DeepEP runs two kernel families: low-latency (decode,
`wideep_deepep_ll_perf`) and normal (prefill, `wideep_deepep_normal_perf`, the fastest SM setting of
each shape); a step with prompt tokens uses the normal kernels, a decode-only step the low-latency
ones. `fit_phase` fits (latency, bandwidth) per family and phase by least squares on relative error;
the constants below are the fits on the shipped SGLang 0.5.12 H100 SXM tables (EP8 on one node).
Elsewhere (other devices, EP wider than a node) the default is the link model: the device's
latency and bandwidth × link efficiency; across nodes the remote bytes split between the NVLink
peers of the node ((node − 1) / (ep − 1) of them) and the other nodes ((ep − node) / (ep − 1)),
sent at once, so the slower share sets the time, with the inter-node latency.

Each GPU is one EP rank: an attention-DP rank of tp GPUs dispatches its tokens as tp slices of
tokens / tp each (`layer_seconds` takes the tokens per GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from paretoserve.catalog.device import DeviceSpec


@dataclass(frozen=True, slots=True)
class A2aPhase:
    """One phase of one kernel family: fixed latency (s) and bandwidth (bytes/s) of remote bytes."""

    latency_s: float
    bandwidth: float

    def seconds(self, remote_bytes: float) -> float:
        """Seconds to move `remote_bytes` bytes (0 when nothing moves)."""
        return self.latency_s + remote_bytes / self.bandwidth if remote_bytes > 0 else 0.0


@dataclass(frozen=True, slots=True)
class A2aModel:
    """Dispatch and combine phases of the low-latency and normal kernel families."""

    ll_dispatch: A2aPhase
    ll_combine: A2aPhase
    normal_dispatch: A2aPhase
    normal_combine: A2aPhase
    source: str


#: Fits on shared/data/kernels/h100_sxm/comm/sglang/0.5.12/wideep_deepep_{ll,normal}_perf.parquet.
H100_DEEPEP = A2aModel(
    ll_dispatch=A2aPhase(11.5e-6, 241e9), ll_combine=A2aPhase(11.3e-6, 215e9),
    normal_dispatch=A2aPhase(27.0e-6, 441e9), normal_combine=A2aPhase(39.0e-6, 469e9),
    source="DeepEP tables, SGLang 0.5.12, H100 SXM, EP8")
_FITTED = {"h100_sxm": H100_DEEPEP}


def dispatch_bytes_per_selection(hidden: int) -> float:
    """FP8 payload + per-128 scales + 16 B metadata (DeepEP dispatch)."""
    return hidden + hidden / 128 * 4 + 16


def combine_bytes_per_selection(hidden: int) -> float:
    """BF16 expert output (DeepEP combine)."""
    return 2.0 * hidden


def remote_fraction(ep: int) -> float:
    """Share of a rank's selections whose expert lives on another rank (uniform placement)."""
    return (ep - 1) / ep


def a2a_model(device: DeviceSpec, ep: int, link_efficiency: float) -> A2aModel:
    """The fitted DeepEP model of `device` when EP fits in one node of it, else the link default."""
    fitted = _FITTED.get(device.name)
    if fitted is not None and ep <= device.devices_per_node:
        return fitted
    node = device.devices_per_node
    if ep <= node:
        phase = A2aPhase(device.intra_node_latency, device.intra_node_bandwidth * link_efficiency)
        return A2aModel(phase, phase, phase, phase, "link default (intra-node)")
    share_intra, share_inter = (node - 1) / (ep - 1), (ep - node) / (ep - 1)
    seconds_per_byte = max(share_intra / device.intra_node_bandwidth, share_inter / device.inter_node_bandwidth)
    phase = A2aPhase(device.inter_node_latency, link_efficiency / seconds_per_byte)
    return A2aModel(phase, phase, phase, phase, "link default (inter-node)")


def layer_seconds(model: A2aModel, *, tokens_per_gpu: float, top_k: int, hidden: int, ep: int,
                  prefill: bool) -> float:
    """Dispatch + combine seconds of one MoE layer (module docstring)."""
    if ep <= 1 or tokens_per_gpu <= 0:
        return 0.0
    sel = tokens_per_gpu * top_k * remote_fraction(ep)
    d, c = ((model.normal_dispatch, model.normal_combine) if prefill
            else (model.ll_dispatch, model.ll_combine))
    return d.seconds(sel * dispatch_bytes_per_selection(hidden)) + c.seconds(sel * combine_bytes_per_selection(hidden))


def fit_phase(remote_bytes: np.ndarray, seconds: np.ndarray) -> A2aPhase:
    """(latency, bandwidth) minimising Σ ((latency + bytes / bw) / measured − 1)²: linear least
    squares in (latency, 1 / bw) with rows weighted by 1 / measured."""
    a = np.stack([np.ones_like(remote_bytes), remote_bytes], axis=1) / seconds[:, None]
    (lat, inv_bw), *_ = np.linalg.lstsq(a, np.ones_like(seconds), rcond=None)
    return A2aPhase(float(max(lat, 0.0)), float(1.0 / inv_bw))
