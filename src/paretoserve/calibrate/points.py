"""Measured serving points (AIC's `silicon_sample.csv` schema) → the deployments they ran.

Each row is a closed-loop benchmark at fixed concurrency with fixed input/output lengths
(`../shared/reference/engine_facts.md` §1). `map_row` turns a row into a `PointDeployment`, a pure
function of the row: the engine and its policy, the weight / KV / compute dtypes, the per-role
layout (TP, PP, attention-DP, MoE-TP, EP, worker count, batch size), the engine caps, the concurrency
and lengths, and the measured mean TTFT and TPOT in seconds. Where the simulator cannot represent
the row yet, `unsupported` says why in one line (every missing feature, joined by "; "); such a row
is never replayed as a different deployment.

Rules (the AIC benchmark generator's, engine_facts.md §1):
- concurrency = batch_size × attention-DP (aggregated; one replica — the table records no replica
  count, so a row whose id says another concurrency is unsupported), or decode batch_size × decode
  workers × decode attention-DP (disaggregated);
- precision: `gemm_quant_mode` / `moe_quant_mode` name the weight format (blank: the checkpoint's own);
  GEMMs compute in the weights' format where the GPU has that math (fp8 on H100), else in bf16
  (weight-only: H100 has no FP4 math); KV cache in bf16 (vLLM's `--kv-cache-dtype auto`);
- engine caps (vLLM): aggregated and decode workers max_num_seqs = 512 (2 × batch above 512);
  max_num_batched_tokens = max_num_seqs + ISL + 1500 (aggregated), max_num_seqs (decode);
  prefill workers 1 sequence and ISL + 1500 tokens; prefix caching off (random prompts);
- layout (`Role.layout`, engine-independent): attention TP `tp_size` × attention-DP
  `attention_dp_size` GPUs per stage, experts split as `moe_tp_size` × `moe_ep_size` (blank or 0:
  sharded like attention over tp × DP); caps and batch size are per attention-DP rank;
- attention-DP left blank (TRT-LLM aggregated MoE rows): when the concurrency the row states
  (`_c<N>` in its id) is batch × tp while moe_tp × moe_ep = tp, the row ran attention-DP over its
  tp GPUs — engine_facts §1: with ADP these engines run attention TP 1 and attention-DP = GPUs per
  replica, and batch_size is per attention-DP rank — so it maps to tp 1 × attention-DP tp (an
  inference: the table does not record `enable_attention_dp`; the other reading, tp replicas of
  TP tp, would need tp² GPUs where the MoE columns account for tp);
- disaggregated rows of the older dumps (no worker counts, `map_rows`): a row whose engine, ISL, OSL,
  GPUs per prefill and per decode instance and measured mean TTFT and TPOT (to 10⁻⁶ ms) equal those
  of a row that has the counts is the same measurement in another dump and takes that row's per-role
  columns (worker counts, batch sizes and the layout, which the newer dump writes as attention TP 1
  × attention-DP where the older one wrote TP; the twin's concurrency must match the id's); the
  others stay unrepresented — their worker counts cannot be derived (decode concurrency = batch ×
  workers has no unique factorisation, and nothing in the row constrains the prefill workers);
- SGLang (`sglang` policy): max_running_requests = the generator's max batch size (128, or the
  row's batch when larger; 1 for prefill workers); chunked_prefill_size by GPU memory (8192 on
  H100); max_prefill_tokens = ISL + 1500 (aggregated, prefill), the max batch size (decode); mixed
  chunks on for aggregated workers; requests sent with ignore_eos and the radix cache off (so the
  run-to-completion KV check); page size 1; mem_fraction_static by SGLang's rule for the row's
  version, turned into the simulator's gpu_memory_utilization by adding its activation reserve;
- TensorRT-LLM (`trtllm` policy): max_batch_size as SGLang's; max_num_tokens = max_batch_size + ISL
  + 1500 (aggregated), ISL + 1500 (prefill), max_batch_size (decode), rounded up to 32; tokens per
  block 32; no chunked context; KV = 0.80 of the memory left after the weights one GPU of the
  layout holds and activations (`free_gpu_memory_fraction`), turned into the equivalent
  gpu_memory_utilization.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, replace
from pathlib import Path

from paretoserve.catalog.device import DeviceSpec, load_device
from paretoserve.catalog.model import ModelSpec, load_model
from paretoserve.errors import UserError
from paretoserve.perf.layout import ParallelLayout
from paretoserve.perf.memory import runtime_reserve_bytes, weight_bytes_per_device
from paretoserve.perf.roofline import gemm_compute_dtype
from paretoserve.sim.schedulers.sglang import chunked_prefill_size, mem_fraction_static

#: Columns a points file must have (the rest of AIC's schema is optional).
REQUIRED = ("id", "backend", "model_path", "system", "mode", "isl", "osl", "silicon_ttft_ms", "silicon_tpot_ms")
#: Engines whose scheduler the simulator models, by the table's backend name → policy.
POLICIES = {"vllm": "vllm", "sglang": "sglang", "trtllm": "trtllm"}
_ENGINE_NAMES = {"sglang": "SGLang", "trtllm": "TensorRT-LLM"}
_QUANT = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp8": "fp8", "fp8_block": "fp8",
          "fp8_static": "fp8", "int8_wo": "int8", "int4_wo": "int4", "sq": "int8", "nvfp4": "fp4",
          "nvfp4_wo": "fp4", "w4a16_mxfp4": "fp4", "mxfp4": "fp4", "w4afp8": "int4"}
_CONCURRENCY_IN_ID = re.compile(r"_c(\d+)(?:_|$)")
#: AIC generator: the max batch size of SGLang / TRT-LLM aggregated and decode workers.
GENERATOR_MAX_BATCH = 128
#: AIC generator: TRT-LLM `tokens_per_block` and `free_gpu_memory_fraction`.
TRT_TOKENS_PER_BLOCK = 32
TRT_FREE_GPU_MEMORY_FRACTION = 0.80


@dataclass(frozen=True)
class Role:
    """One role's engine instances: layout and caps.

    Attributes:
        name: "agg", "prefill" or "decode".
        workers: engine instances of this role.
        tp: attention tensor-parallel GPUs; pp: pipeline stages.
        attention_dp: attention data-parallel ranks per instance.
        moe_tp: MoE tensor-parallel ways; moe_ep: expert-parallel ways (1, 1 for dense models).
        batch_size: concurrency per instance and attention-DP rank.
        max_num_seqs: engine cap on running sequences; max_num_batched_tokens: tokens per step.
        block_size: tokens per KV block (page).
        gpu_memory_utilization: share of device memory for weights, runtime reserve and KV, as
            `paretoserve.perf.memory.kv_capacity` reads it.
        policy_options: (name, value) settings of the engine's scheduling policy.
    """

    name: str
    workers: int
    tp: int
    pp: int
    attention_dp: int
    moe_tp: int
    moe_ep: int
    batch_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    policy_options: tuple[tuple[str, float], ...] = ()

    def layout(self, moe: bool = True) -> ParallelLayout:
        """The engine-independent parallel layout of one instance (UserError if inconsistent).

        Blank / 0 MoE columns (or no EP) mean: experts sharded over all tp × attention-DP GPUs
        (moe_tp = tp × DP ÷ EP); a dense model (`moe` false) ignores the MoE columns."""
        if not moe:
            return ParallelLayout(tp=self.tp, pp=self.pp, attention_dp=self.attention_dp)
        ep = max(1, self.moe_ep)
        return ParallelLayout(tp=self.tp, pp=self.pp, attention_dp=self.attention_dp,
                              moe_tp=self.moe_tp if self.moe_tp and self.moe_ep else None, ep=ep)


@dataclass(frozen=True)
class PointDeployment:
    """A measured point as the deployment it ran (see the module docstring for the rules).

    Attributes:
        id: the row's `id`; line: its line in the file.
        model_path: the row's model; model: the catalog name it resolves to (None: not in the catalog).
        backend, backend_version, mode: engine, its version, "agg" or "disagg".
        hardware: catalog device name (None: not in the catalog).
        policy: the simulator's scheduling policy for the engine (None: not modelled).
        weight_dtype, kv_dtype, compute_dtype: formats of weights, KV cache and GEMM math.
        roles: ("agg",) or ("prefill", "decode") roles.
        concurrency: users of the closed loop; isl, osl: tokens in and out per request.
        measured_ttft_s, measured_tpot_s: the measured means in seconds.
        unsupported: why the simulator cannot represent the row (None: it can).
    """

    id: str
    line: int
    model_path: str
    model: str | None
    backend: str
    backend_version: str
    mode: str
    hardware: str | None
    policy: str | None
    weight_dtype: str
    kv_dtype: str
    compute_dtype: str
    roles: tuple[Role, ...]
    concurrency: int
    isl: int
    osl: int
    measured_ttft_s: float
    measured_tpot_s: float
    unsupported: str | None = None

    @property
    def group(self) -> tuple[str, str, str]:
        """(model, engine, mode): the unit errors are reported by."""
        return (self.model_path, self.backend, self.mode)


def read_points(path: str | Path) -> list[tuple[int, dict[str, str]]]:
    """(line, row) of every row of a points CSV; UserError for an unreadable file or missing column."""
    where = str(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"not a measured-points table: missing column(s) {', '.join(missing)} "
                                f"(expected AIC's silicon_sample.csv schema)", file=where, line=1)
            return [(reader.line_num, dict(row)) for row in reader]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the points table: {exc}", file=where) from None


def parse_where(text: str | None) -> dict[str, str]:
    """"backend=vllm,model=Qwen/Qwen3-32B" → {"backend": "vllm", "model_path": "Qwen/Qwen3-32B"}."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--where {item!r}: expected COLUMN=VALUE[,COLUMN=VALUE...]", field="where")
        key = key.strip()
        out["model_path" if key == "model" else key] = value.strip()
    return out


def select(rows: list[tuple[int, dict[str, str]]], where: dict[str, str],
           path: str = "") -> list[tuple[int, dict[str, str]]]:
    """The rows whose columns equal every value of `where` (UserError for an unknown column)."""
    if rows:
        unknown = [k for k in where if k not in rows[0][1]]
        if unknown:
            raise UserError(f"--where: no column {', '.join(unknown)}", file=path or None, field="where")
    return [(n, r) for n, r in rows if all(r.get(k, "") == v for k, v in where.items())]


def _int(row: dict[str, str], column: str, where: str, line: int, default: int | None = None) -> int:
    text = (row.get(column) or "").strip()
    if not text:
        if default is None:
            raise UserError("expected a whole number", file=where, line=line, field=column)
        return default
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"expected a whole number, got {text!r}", file=where, line=line, field=column) from None
    if value != int(value) or value < 0:
        raise UserError(f"expected a whole number >= 0, got {text!r}", file=where, line=line, field=column)
    return int(value)


def _float(row: dict[str, str], column: str, where: str, line: int) -> float:
    text = (row.get(column) or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"expected a number of ms, got {text!r}", file=where, line=line, field=column) from None
    if not value > 0:
        raise UserError(f"expected a positive number of ms, got {text!r}", file=where, line=line, field=column)
    return value


def resolve_model(model_path: str) -> ModelSpec | None:
    """The catalog model of a Hugging Face id (an "-Instruct" tune shares its base's config), or None."""
    for name in (model_path, re.sub(r"-Instruct$", "", model_path, flags=re.IGNORECASE)):
        try:
            return load_model(name)
        except UserError:
            continue
    return None


def _caps(name: str, batch: int, isl: int) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens) the benchmark generator gives a vLLM worker."""
    if name == "prefill":
        return 1, isl + 1500
    seqs = 512 if batch < 512 else 2 * batch
    return seqs, seqs + (isl + 1500 if name == "agg" else 0)


def _generator_tokens(name: str, max_batch: int, isl: int) -> int:
    """The generator's max_num_tokens: ISL + 1500 (prefill), max batch (decode), both (aggregated)."""
    return {"prefill": isl + 1500, "decode": max_batch}.get(name, max_batch + isl + 1500)


def _engine_settings(backend: str, name: str, batch: int, isl: int, layout: ParallelLayout | None,
                     version: str, model: ModelSpec | None, device: DeviceSpec | None,
                     weight_dtype: str) -> dict[str, object]:
    """Role fields from max_num_seqs on, for the engine the row ran (module docstring); `layout`
    None when the role's columns are inconsistent (then only the attention tp × pp is known)."""
    tp, pp = (layout.tp, layout.pp) if layout is not None else (1, 1)
    if backend == "vllm":
        seqs, tokens = _caps(name, batch, isl)
        return {"max_num_seqs": seqs, "max_num_batched_tokens": tokens}
    seqs = 1 if name == "prefill" else max(GENERATOR_MAX_BATCH, batch)
    memory = device.mem_capacity if device else 0.0
    if backend == "sglang":
        chunk = chunked_prefill_size(memory) if device else 8192
        tokens = chunk + seqs  # decodes are not capped by a token budget; prefill by the options
        static = mem_fraction_static(memory, tp, pp, version) if device else 0.88
        fraction = static + _reserve_share(model, device, tp, tokens, seqs)
        options = (("chunked_prefill_size", float(chunk)),
                   ("max_prefill_tokens", float(seqs if name == "decode" else isl + 1500)),
                   ("mixed_chunk", 1.0 if name == "agg" else 0.0), ("ignore_eos", 1.0))
        return {"max_num_seqs": seqs, "max_num_batched_tokens": tokens, "block_size": 1,
                "gpu_memory_utilization": min(1.0, fraction), "policy_options": options}
    block = TRT_TOKENS_PER_BLOCK
    tokens = -(-_generator_tokens(name, seqs, isl) // block) * block
    held = _reserve_share(model, device, tp, tokens, seqs)
    if model is not None and device is not None and layout is not None:
        held += weight_bytes_per_device(model, weight_dtype, layout) / device.mem_capacity
    fraction = TRT_FREE_GPU_MEMORY_FRACTION + (1.0 - TRT_FREE_GPU_MEMORY_FRACTION) * held
    return {"max_num_seqs": seqs, "max_num_batched_tokens": tokens, "block_size": block,
            "gpu_memory_utilization": min(1.0, fraction), "policy_options": (("chunked_prefill", 0.0),)}


def _reserve_share(model: ModelSpec | None, device: DeviceSpec | None, tp: int, tokens: int,
                   seqs: int) -> float:
    """The simulator's runtime reserve as a share of device memory (0 without model or device)."""
    if model is None or device is None:
        return 0.0
    return runtime_reserve_bytes(model, tp, tokens, seqs) / device.mem_capacity


def _role(row: dict[str, str], name: str, where: str, line: int, isl: int, backend: str,
          model: ModelSpec | None, device: DeviceSpec | None, weight_dtype: str) -> Role:
    prefix = "" if name == "agg" else f"{name}_"
    get = lambda column, default=None: _int(row, prefix + column, where, line, default)  # noqa: E731
    tp = max(1, get("tp_size", 1))
    pp = max(1, get("pp_size", 1))
    adp = max(1, get("attention_dp_size", 1))
    batch = get("batch_size", 1 if name == "prefill" else None)
    moe_tp, moe_ep = get("moe_tp_size", 0), get("moe_ep_size", 0)
    if _implied_attention_dp(row, name, backend, model, batch, tp, moe_tp, moe_ep):
        tp, adp = 1, tp
    role = Role(name, 1 if name == "agg" else get("num_workers"), tp, pp, adp, moe_tp, moe_ep, batch, 0, 0)
    try:
        layout: ParallelLayout | None = role.layout(model is not None and model.is_moe)
    except UserError:
        layout = None  # stated by `_layout_problems`
    settings = _engine_settings(backend, name, batch, isl, layout, (row.get("backend_version") or "").strip(),
                                model, device, weight_dtype)
    return replace(role, **settings)  # type: ignore[arg-type]


def _implied_attention_dp(row: dict[str, str], name: str, backend: str, model: ModelSpec | None,
                          batch: int, tp: int, moe_tp: int, moe_ep: int) -> bool:
    """Whether an aggregated TRT-LLM MoE row with attention-DP left blank ran attention-DP over its
    tp GPUs: its id states concurrency batch × tp and moe_tp × moe_ep = tp (module docstring)."""
    stated = _CONCURRENCY_IN_ID.search(row.get("id", ""))
    return (name == "agg" and backend == "trtllm" and tp > 1 and model is not None
            and model.is_moe and not (row.get("attention_dp_size") or "").strip() and stated is not None
            and int(stated[1]) == batch * tp and moe_tp * max(1, moe_ep) == tp)


def _dtype(row: dict[str, str], model: ModelSpec | None) -> tuple[str | None, str | None]:
    """(weight dtype, reason it is unsupported)."""
    modes = {m for m in ((row.get("gemm_quant_mode") or "").strip().lower(),
                         (row.get("moe_quant_mode") or "").strip().lower()) if m}
    if not modes and (row.get("precision") or "").strip():
        modes = {row["precision"].strip().lower()}
    unknown = sorted(m for m in modes if m not in _QUANT)
    if unknown:
        return None, f"quantization {', '.join(unknown)} has no weight format in the catalog"
    dtypes = {_QUANT[m] for m in modes}
    if len(dtypes) > 1:
        return None, f"mixed weight formats ({', '.join(sorted(dtypes))}: GEMM vs MoE) are not modelled"
    if dtypes:
        return dtypes.pop(), None
    return (model.weight_dtype if model else "bf16"), None


def _layout_problems(role: Role, model: ModelSpec | None) -> list[str]:
    """Why `role`'s layout cannot run (inconsistent columns, heads or experts not divisible)."""
    label = "" if role.name == "agg" else f"{role.name}: "
    try:
        layout = role.layout(model is not None and model.is_moe)
        if model is not None:
            layout.check(model)
    except UserError as exc:
        return [f"{label}{exc}"]
    return []


def map_row(row: dict[str, str], line: int, where: str = "") -> PointDeployment:
    """The deployment of one points row (module docstring); UserError for malformed fields."""
    backend = (row.get("backend") or "").strip().lower()
    mode = (row.get("mode") or "").strip().lower()
    if mode not in ("agg", "disagg"):
        raise UserError(f"expected agg or disagg, got {mode!r}", file=where, line=line, field="mode")
    isl, osl = _int(row, "isl", where, line), _int(row, "osl", where, line)
    problems: list[str] = []
    model = resolve_model(row["model_path"].strip())
    if model is None:
        problems.append(f"model {row['model_path']} is not in the catalog")
    try:
        device: DeviceSpec | None = load_device(row["system"].strip())
    except UserError:
        device = None
        problems.append(f"system {row['system']} is not in the hardware catalog")
    policy = POLICIES.get(backend)
    if policy is None:
        problems.append(f"engine {_ENGINE_NAMES.get(backend, backend)}: its scheduler is not modelled "
                        f"(only vLLM's, SGLang's and TensorRT-LLM's)")
    weight, dtype_problem = _dtype(row, model)
    if dtype_problem:
        problems.append(dtype_problem)
    weight = weight or "bf16"
    compute = gemm_compute_dtype(weight, device) if device is not None else "bf16"
    if mode == "agg":
        roles: tuple[Role, ...] = (_role(row, "agg", where, line, isl, backend, model, device, weight),)
        concurrency = roles[0].batch_size * roles[0].attention_dp
    elif not (row.get("prefill_num_workers") or "").strip() or not (row.get("decode_num_workers") or "").strip():
        roles = ()
        concurrency = 0
        problems.append("disaggregated row without prefill/decode worker counts (an older dump, and no row "
                        "records the same measurement with them)")
    else:
        roles = tuple(_role(row, name, where, line, isl, backend, model, device, weight)
                      for name in ("prefill", "decode"))
        concurrency = roles[1].batch_size * roles[1].workers * roles[1].attention_dp
    stated = _CONCURRENCY_IN_ID.search(row["id"])
    if stated and roles and int(stated[1]) != concurrency:
        problems.append(f"the id says concurrency {stated[1]} but the layout gives {concurrency} "
                        f"(replica count not recorded)")
    for role in roles:
        problems.extend(_layout_problems(role, model))
        if role.batch_size < 1 or role.workers < 1:
            problems.append(f"{role.name}: batch size and worker count must be >= 1")
    return PointDeployment(
        id=row["id"], line=line, model_path=row["model_path"].strip(), model=model.name if model else None,
        backend=backend, backend_version=(row.get("backend_version") or "").strip(), mode=mode,
        hardware=device.name if device else None, policy=policy, weight_dtype=weight, kv_dtype="bf16",
        compute_dtype=compute,
        roles=roles, concurrency=concurrency, isl=isl, osl=osl,
        measured_ttft_s=_float(row, "silicon_ttft_ms", where, line) / 1e3,
        measured_tpot_s=_float(row, "silicon_tpot_ms", where, line) / 1e3,
        unsupported="; ".join(dict.fromkeys(problems)) or None)


#: Per-role columns of the disaggregated layout (`map_rows` takes them from a row's twin).
_ROLE_COLUMNS = ("num_workers", "batch_size", "tp_size", "pp_size", "attention_dp_size", "moe_tp_size",
                 "moe_ep_size")
_TWIN_FILLS = tuple(f"{role}_{c}" for role in ("prefill", "decode") for c in _ROLE_COLUMNS)


def _gpus(row: dict[str, str], role: str) -> int:
    """GPUs of one instance of `role` (tp × pp × attention-DP; blank counts 1)."""
    n = 1
    for c in ("tp_size", "pp_size", "attention_dp_size"):
        try:
            n *= max(1, int(float(row.get(f"{role}_{c}") or 1)))
        except ValueError:
            pass  # a malformed column is reported when the row is mapped
    return n


def _measured_key(row: dict[str, str]) -> tuple[object, ...] | None:
    """Engine, mode, lengths, GPUs per role and the measured means (None if a mean is not a number)."""
    try:
        means = (round(float(row["silicon_ttft_ms"]), 6), round(float(row["silicon_tpot_ms"]), 6))
    except (KeyError, ValueError):
        return None
    return (*((row.get(c) or "").strip().lower() for c in ("backend", "mode", "isl", "osl")),
            _gpus(row, "prefill"), _gpus(row, "decode"), *means)


def with_twin_worker_counts(rows: list[tuple[int, dict[str, str]]]) -> list[tuple[int, dict[str, str]]]:
    """`rows` with each older-dump disaggregated row (no worker counts) completed from the row that
    records the same measurement with its counts (module docstring); the rest unchanged."""
    counted: dict[tuple[object, ...], dict[str, str]] = {}
    for _, row in rows:
        if all((row.get(f"{role}_{c}") or "").strip() for role in ("prefill", "decode")
               for c in ("num_workers", "batch_size")):
            key = _measured_key(row)
            if key is not None:
                counted.setdefault(key, row)
    out = []
    for line, row in rows:
        old_dump = (row.get("mode") or "").strip().lower() == "disagg" and not any(
            (row.get(c) or "").strip() for c in ("prefill_num_workers", "decode_num_workers"))
        twin = counted.get(_measured_key(row)) if old_dump else None
        out.append((line, {**row, **{c: twin.get(c, "") for c in _TWIN_FILLS}} if twin is not None else row))
    return out


def map_rows(rows: list[tuple[int, dict[str, str]]], where: str = "") -> list[PointDeployment]:
    """`map_row` of every (line, row), older-dump disaggregated rows completed from their twins first
    (`with_twin_worker_counts`)."""
    return [map_row(row, line, where) for line, row in with_twin_worker_counts(rows)]
