"""From a `SimulateConfig` to engine configurations: catalog facts, roofline step time, KV memory."""

from __future__ import annotations

import re
from dataclasses import dataclass

from paretoserve.catalog.device import DeviceSpec, load_device
from paretoserve.catalog.model import ModelSpec, load_model
from paretoserve.errors import UserError
from paretoserve.perf.calibrated import load_step_model
from paretoserve.perf.layout import ParallelLayout
from paretoserve.perf.memory import kv_capacity
from paretoserve.perf.routing import Routing
from paretoserve.perf.speculative import Speculation, build_spec_decoder, kv_tokens_with_drafter
from paretoserve.sim.config import DisaggConfig, EngineConfig
from paretoserve.sim.run_config import SimulateConfig
from paretoserve.sim.schedulers import policy_class

_DISAGG = re.compile(r"^\s*(\d+)\s*P\s*(\d+)\s*D\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Deployment:
    """What `simulate` needs, plus the derived figures worth writing to config.yaml.

    Attributes:
        model: the model.
        device: the accelerator every replica runs on.
        engine: the engine of each replica (None under disaggregation).
        disagg: the disaggregated pools (None without).
        replicas: engines behind the router (without disaggregation): replicas × attention-DP
            ranks, each rank simulated as its own engine (own scheduler and KV cache).
        derived: KV capacity per replica, link figures, step-time model — for the record.
    """

    model: ModelSpec
    device: DeviceSpec
    engine: EngineConfig | None
    disagg: DisaggConfig | None
    replicas: int
    derived: dict[str, object]


def parse_disagg(text: str) -> tuple[int, int]:
    """"2P1D" -> (2, 1): prefill and decode replica counts."""
    match = _DISAGG.match(text)
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise UserError(f"disaggregation {text!r}: expected xPyD with x, y >= 1 (e.g. 2P1D)",
                        field="disagg")
    return int(match[1]), int(match[2])


def layout_for(cfg: SimulateConfig, tp: int) -> ParallelLayout:
    """The parallel layout of one engine instance with attention TP `tp` (config's DP, EP, routing)."""
    return ParallelLayout(tp=tp, pp=cfg.pp, attention_dp=cfg.dp_attention, ep=cfg.ep,
                          routing=Routing(skew=cfg.moe_skew, redundant_experts=cfg.eplb_redundant))


def _engine(cfg: SimulateConfig, model: ModelSpec, device: DeviceSpec, tp: int) -> EngineConfig:
    """The engine of one attention-DP rank on `tp` × `cfg.pp` devices: its own scheduler and KV
    cache; its step time prices the MoE layers on the tokens of all `cfg.dp_attention` ranks."""
    layout = layout_for(cfg, tp)
    block_size = cfg.block_size or policy_class(cfg.policy).block_size
    step = load_step_model(model, device, weight_dtype=cfg.weight_dtype, kv_dtype=cfg.kv_dtype,
                           profile=cfg.profile, layout=layout)
    kv = kv_capacity(model, device, gpu_memory_utilization=cfg.gpu_memory_utilization,
                     weight_dtype=cfg.weight_dtype, kv_dtype=cfg.kv_dtype,
                     max_num_batched_tokens=cfg.max_num_batched_tokens, max_num_seqs=cfg.max_num_seqs,
                     block_size=block_size, layout=layout)
    devices = tp * cfg.pp
    spec = speculation_of(cfg)
    decoder = None if spec is None else build_spec_decoder(
        spec, model, device, step, layout, weight_dtype=cfg.weight_dtype, kv_dtype=cfg.kv_dtype,
        block_size=block_size, seed=cfg.seed)
    kv_tokens = kv.tokens if decoder is None else kv_tokens_with_drafter(kv, decoder)
    return EngineConfig(
        step_model=step, kv_tokens=cfg.kv_tokens or kv_tokens,
        block_size=block_size, policy=cfg.policy, max_num_seqs=cfg.max_num_seqs,
        max_num_batched_tokens=cfg.max_num_batched_tokens, prefix_caching=cfg.prefix_caching,
        policy_options=dict(cfg.policy_options), kv_bytes_per_token=kv.bytes_per_token,
        swap_bandwidth=device.pcie_bandwidth * devices, max_model_len=model.max_position_embeddings,
        devices=devices, kv_layout=kv.layout, speculative=decoder)


def speculation_of(cfg: SimulateConfig) -> Speculation | None:
    """The config's speculative-decoding settings (None: off); UserError for stray companions."""
    if cfg.speculative is None:
        if (cfg.num_speculative_tokens, cfg.acceptance_length, cfg.acceptance_rate) != (None, None, None):
            raise UserError("--num-speculative-tokens/--acceptance-length/--acceptance-rate need "
                            "--speculative", field="speculative")
        return None
    return Speculation.parse(cfg.speculative, cfg.num_speculative_tokens, cfg.acceptance_length,
                             cfg.acceptance_rate)


def _describe(engine: EngineConfig) -> dict[str, object]:
    described: dict[str, object] = {
        "devices": engine.devices, "kv_tokens": engine.num_blocks * engine.block_size,
        "block_size": engine.block_size, "kv_bytes_per_token": engine.kv_bytes_per_token}
    decoder = engine.speculative
    if decoder is not None:
        described["speculative"] = {
            "settings": decoder.spec.describe(), "verify_width": decoder.width,
            "mean_tokens_per_step": decoder.spec.mean_tokens,
            "drafter": decoder.draft_name,
            "drafter_weight_bytes_per_device": decoder.draft_weight_bytes,
            "drafter_kv_bytes_per_token_per_device": decoder.draft_kv_bytes_per_token}
    return described


def kv_link(device: DeviceSpec, prefill_replicas: int, prefill_tp: int, decode_replicas: int,
            decode_tp: int, pp: int) -> tuple[float, float, bool]:
    """(bandwidth bytes/s, latency s, same node) of the prefill → decode KV transfer.

    The pools share a node when all their devices fit in one; each tensor-parallel rank sends its
    own KV shard over its own link, so the bandwidth scales with the smaller TP.
    """
    same_node = (prefill_replicas * prefill_tp + decode_replicas * decode_tp) * pp <= device.devices_per_node
    per_device = device.intra_node_bandwidth if same_node else device.inter_node_bandwidth
    latency = device.intra_node_latency if same_node else device.inter_node_latency
    return per_device * min(prefill_tp, decode_tp), latency, same_node


def build_deployment(cfg: SimulateConfig) -> Deployment:
    """Load the catalog entries and build the engines; UserError for impossible settings."""
    model = load_model(cfg.model)
    device = load_device(cfg.hardware)
    step_model = (f"calibrated profile {cfg.profile}" if cfg.profile
                  else "roofline (datasheet peaks x default efficiencies)")
    derived: dict[str, object] = {"step_model": step_model,
                                  "max_model_len": model.max_position_embeddings}
    if cfg.disagg is None:
        if cfg.prefill_tp is not None or cfg.decode_tp is not None:
            raise UserError("--prefill-tp/--decode-tp need --disagg xPyD", field="disagg")
        engine = _engine(cfg, model, device, cfg.tp)
        derived["replica"] = _describe(engine)
        if cfg.dp_attention > 1:
            derived["attention_dp_ranks_per_replica"] = cfg.dp_attention
        return Deployment(model, device, engine, None, cfg.replicas * cfg.dp_attention, derived)
    if cfg.replicas != 1:
        raise UserError("--replicas does not combine with --disagg; size the pools with xPyD",
                        field="replicas")
    x, y = parse_disagg(cfg.disagg)
    prefill_tp, decode_tp = cfg.prefill_tp or cfg.tp, cfg.decode_tp or cfg.tp
    prefill = _engine(cfg, model, device, prefill_tp)
    decode = _engine(cfg, model, device, decode_tp)
    bandwidth, latency, same_node = kv_link(device, x, prefill_tp, y, decode_tp, cfg.pp)
    disagg = DisaggConfig(x, y, prefill, decode, kv_bytes_per_token=prefill.kv_bytes_per_token,
                          link_bandwidth=bandwidth, link_latency=latency)
    derived.update(prefill=_describe(prefill), decode=_describe(decode),
                   kv_link={"same_node": same_node, "bandwidth": bandwidth, "latency": latency})
    return Deployment(model, device, None, disagg, cfg.replicas, derived)
