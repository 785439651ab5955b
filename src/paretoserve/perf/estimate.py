"""`estimate`: one prefill step and one decode step of a model on a device, with the reasons."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from paretoserve.catalog.device import DeviceSpec, load_device
from paretoserve.catalog.model import ModelSpec, load_model
from paretoserve.perf.calibrated import load_step_model
from paretoserve.perf.layout import ParallelLayout
from paretoserve.perf.memory import KvCapacity, kv_capacity
from paretoserve.perf.roofline import Efficiency, Roofline
from paretoserve.perf.shape import PrefillChunk, StepShape, StepTime
from paretoserve.perf.speculative import Speculation, build_spec_decoder, kv_tokens_with_drafter


@dataclass(frozen=True)
class Estimate:
    """Roofline estimate of a prefill step and a decode step (seconds, tokens/s, bytes)."""

    model: ModelSpec
    device: DeviceSpec
    tp: int
    pp: int
    batch: int
    prompt: int
    context: int
    weight_dtype: str
    kv_dtype: str
    prefill: StepTime
    decode: StepTime
    kv: KvCapacity
    profile: str | None = None
    speculation: Speculation | None = None
    verify: StepTime | None = None
    kv_tokens_with_drafter: int | None = None

    @property
    def prefill_tokens_per_s(self) -> float:
        """Prompt tokens processed per second during the prefill step."""
        return self.batch * self.prompt / self.prefill.seconds

    @property
    def decode_tokens_per_s(self) -> float:
        """Output tokens per second across the batch during decode."""
        return self.batch / self.decode.seconds

    @property
    def verify_tokens_per_s(self) -> float | None:
        """Output tokens per second across the batch with speculation: batch × mean tokens per
        verify step / verify step seconds (None without speculation)."""
        if self.verify is None or self.speculation is None:
            return None
        return self.batch * self.speculation.mean_tokens / self.verify.seconds

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary (SI units)."""
        def step(st: StepTime) -> dict[str, object]:
            return {"seconds": st.seconds, "flops": st.flops, "bytes": st.bytes,
                    "ops": [asdict(op) for op in st.ops]}

        return {
            "model": self.model.name, "hardware": self.device.name, "tp": self.tp, "pp": self.pp,
            "batch": self.batch, "prompt_tokens": self.prompt, "context_tokens": self.context,
            "weight_dtype": self.weight_dtype, "kv_dtype": self.kv_dtype, "estimated": True,
            "step_model": f"calibrated profile {self.profile}" if self.profile else "datasheet roofline",
            "params_total": self.model.params.total, "params_active": self.model.params.active,
            "prefill": step(self.prefill), "decode": step(self.decode),
            "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "kv_capacity_tokens": self.kv.tokens, "kv_bytes_per_token": self.kv.bytes_per_token,
            "weight_bytes_per_device": self.kv.weight_bytes_per_device,
            "max_sequences_at_context": self.kv.max_sequences(self.context),
            **({} if self.verify is None or self.speculation is None else {
                "speculative": self.speculation.describe(), "verify": step(self.verify),
                "verify_tokens_per_s": self.verify_tokens_per_s,
                "kv_capacity_tokens_with_drafter": self.kv_tokens_with_drafter,
                "speculative_speedup": self.verify_tokens_per_s / self.decode_tokens_per_s}),
        }


def estimate(model: str | ModelSpec, hardware: str | DeviceSpec, *, tp: int = 1, pp: int = 1,
             dp_attention: int = 1, ep: int = 1, batch: int = 1, prompt: int = 1024, context: int | None = None,
             weight_dtype: str | None = None, kv_dtype: str | None = None,
             gpu_memory_utilization: float = 0.9, efficiency: Efficiency | None = None,
             profile: str | None = None, speculation: Speculation | None = None) -> Estimate:
    """Estimate prefill of `batch` prompts of `prompt` tokens and one decode step of `batch`
    sequences at `context` tokens (default: `prompt`), with the datasheet roofline or, given a
    calibrated `profile` file for `hardware`, the calibrated model. With `dp_attention` N the batch
    is one attention-DP rank's and the MoE layers see N such batches; `ep` splits the experts.
    With `speculation`, also one verify step of the batch (K + 1 wide, with its K drafter forwards;
    `paretoserve.perf.speculative`)."""
    spec = load_model(model) if isinstance(model, str) else model
    device = load_device(hardware) if isinstance(hardware, str) else hardware
    layout = ParallelLayout(tp=tp, pp=pp, attention_dp=dp_attention, ep=ep)
    roofline = Roofline(spec, device, weight_dtype=weight_dtype, kv_dtype=kv_dtype,
                        efficiency=efficiency, layout=layout)
    model_used = roofline if profile is None else load_step_model(
        spec, device, weight_dtype=weight_dtype, kv_dtype=kv_dtype, profile=profile, layout=layout)
    kv = kv_capacity(spec, device, gpu_memory_utilization=gpu_memory_utilization,
                     weight_dtype=roofline.weight_dtype, kv_dtype=roofline.kv_dtype, layout=layout)
    ctx = prompt if context is None else context
    prefill = model_used.step_time(StepShape(prefill=(PrefillChunk(prompt, 0, True),) * batch))
    decode = model_used.step_time(StepShape(decode=(ctx,) * batch))
    verify = kv_spec = None
    if speculation is not None:
        decoder = build_spec_decoder(speculation, spec, device, model_used, layout,
                                     weight_dtype=weight_dtype, kv_dtype=kv_dtype)
        verify = decoder.step_time((), (ctx,) * batch)
        kv_spec = kv_tokens_with_drafter(kv, decoder)
    return Estimate(spec, device, tp, pp, batch, prompt, ctx, roofline.weight_dtype, roofline.kv_dtype,
                    prefill, decode, kv, profile, speculation, verify, kv_spec)
