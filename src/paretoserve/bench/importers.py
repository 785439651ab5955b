"""Import measurements taken by vLLM into paretoserve's per-request records and run folders.

Two sources:

- **vLLM `bench serve` result JSON** (`--save-result --save-detailed`): per-request lists `ttfts`,
  `itls`, `input_lens`, `output_lens`, `errors` (and `generated_texts`, not kept), plus `date`,
  `request_rate`, `duration`, `model_id`. It holds no send times, so every record gets
  `arrival_s = 0` (or the `start_times` list where a newer vLLM writes one, re-based to 0), and
  the imported summary takes its duration and rates from the file's own `duration`. Failed
  requests (a non-empty `errors` entry) become `bench_error: <message>`.
- **vLLM per-request JSONL** (as in `shared/data/serving_runs/*/requests.jsonl`): `request_id`,
  `input_toks`, `output_toks`, `arrival_time`, `queued_ts`, `scheduled_ts`, `first_token_ts`,
  `last_token_ts`. `arrival_time` is wall-clock (epoch seconds) while the `*_ts` fields are the
  engine's monotonic clock. Arrivals are mapped onto the monotonic clock with one offset,
  `offset = min_i(queued_ts_i - arrival_time_i)`, i.e. assuming the request with the smallest gap
  reached the engine with no client-to-engine delay (every other request then has a delay >= 0),
  and all times are re-based so that the first arrival is t = 0. A request missing a timestamp is
  recorded as failed with `incomplete: ...`.

`vllm_run_settings(folder)` reads the engine settings of such a run from its `meta.json`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from paretoserve.errors import UserError
from paretoserve.jsonlines import iter_json_lines
from paretoserve.metrics.records import RequestRecord
from paretoserve.metrics.slo import Slo
from paretoserve.metrics.summary import Summary, SummaryBuilder
from paretoserve.outputs import claim_folder
from paretoserve.runs import RunWriter
from paretoserve.textfiles import read_json

_BENCH_LISTS = ("ttfts", "itls", "input_lens", "output_lens")
_JSONL_TIMES = ("queued_ts", "scheduled_ts", "first_token_ts", "last_token_ts")
_CLOCK_NOTE = ("arrival_time mapped onto the engine clock with offset min(queued_ts - arrival_time); "
               "first arrival = 0 s")


def import_vllm_bench(path: str | Path) -> tuple[list[RequestRecord], dict[str, Any]]:
    """Records from a vLLM `bench serve` result JSON, and the run facts it states (module docstring)."""
    source = Path(path)
    data = read_json(source)
    if not isinstance(data, dict):
        raise UserError("expected a JSON object (a vLLM bench serve result)", file=str(source))
    missing = [key for key in _BENCH_LISTS if not isinstance(data.get(key), list)]
    if missing:
        raise UserError(f"not a detailed vLLM bench serve result: no list {', '.join(missing)} "
                        "(save it with --save-result --save-detailed)", file=str(source))
    n = len(data["ttfts"])
    errors = data.get("errors") or [""] * n
    starts = data.get("start_times")
    if not isinstance(errors, list):
        raise UserError("expected a list (one error message per request)", file=str(source), field="errors")
    lists = {key: data[key] for key in _BENCH_LISTS} | {"errors": errors}
    if isinstance(starts, list):
        lists["start_times"] = starts
    for key, values in lists.items():
        if len(values) != n:
            raise UserError(f"has {len(values)} entries, expected {n} (one per request)",
                            file=str(source), field=key)
    try:
        records = _bench_records(data, n, errors, starts)
    except (TypeError, ValueError, OverflowError) as exc:
        raise UserError(f"a per-request entry is not a number or list of numbers ({exc})",
                        file=str(source)) from None
    facts = {key: data[key] for key in ("date", "backend", "model_id", "request_rate", "burstiness",
                                        "max_concurrency", "duration", "num_prompts") if key in data}
    facts["arrival_times"] = "start_times" if isinstance(starts, list) else "unknown (all set to 0)"
    return records, facts


def _bench_records(data: dict[str, Any], n: int, errors: list[Any], starts: Any) -> list[RequestRecord]:
    """The records of a vLLM bench serve result (TypeError / ValueError on a malformed entry)."""
    base = min(starts) if isinstance(starts, list) and starts else 0.0
    records = []
    for i in range(n):
        arrival = float(starts[i]) - base if isinstance(starts, list) else 0.0
        error = errors[i]
        prompt_tokens = int(data["input_lens"][i])
        if error:
            records.append(RequestRecord(str(i), arrival, prompt_tokens, 0,
                                         error=f"bench_error: {' '.join(str(error).split())[:200]}"))
            continue
        itl = [float(x) for x in data["itls"][i]]
        first = arrival + float(data["ttfts"][i])
        records.append(RequestRecord(str(i), arrival, prompt_tokens, int(data["output_lens"][i]),
                                     first_token_s=first, last_token_s=first + sum(itl), itl_s=itl))
    return records


def import_vllm_requests(path: str | Path) -> list[RequestRecord]:
    """Records from a vLLM per-request JSONL, on one clock with the first arrival at 0 (module docstring).

    `scheduled_s` is the engine's `scheduled_ts`; `extra.queued_s` keeps `queued_ts`.
    """
    source = Path(path)
    rows: list[dict[str, Any]] = []
    for line, row in iter_json_lines(source):
        if not isinstance(row, dict):
            raise UserError("expected a JSON object", file=str(source), line=line)
        for key in ("request_id", "input_toks", "output_toks", "arrival_time", "queued_ts"):
            if row.get(key) is None:
                raise UserError("missing", file=str(source), line=line, field=key)
        for key in ("input_toks", "output_toks"):
            if type(row[key]) is not int or row[key] < 0:
                raise UserError(f"expected an integer >= 0, got {row[key]!r:.60}", file=str(source),
                                line=line, field=key)
        for key in ("arrival_time", *_JSONL_TIMES):
            value = row.get(key)
            if value is not None and not (isinstance(value, int | float) and not isinstance(value, bool)
                                          and math.isfinite(value)):
                raise UserError(f"expected a finite number of seconds, got {value!r:.60}", file=str(source),
                                line=line, field=key)
        rows.append(row)
    if not rows:
        raise UserError("no requests", file=str(source))
    # Each request's client-to-engine delay is its own gap minus the smallest gap (>= 0 exactly, in
    # floating point too); its arrival on the engine clock is queued_ts minus that delay.
    gaps = [float(r["queued_ts"]) - float(r["arrival_time"]) for r in rows]
    offset = min(gaps)
    arrivals = [float(r["queued_ts"]) - (gap - offset) for r, gap in zip(rows, gaps, strict=True)]
    base = min(arrivals)
    records = []
    for row, arrival in zip(rows, arrivals, strict=True):
        times = {key: None if row.get(key) is None else float(row[key]) - base for key in _JSONL_TIMES}
        missing = [key for key in ("first_token_ts", "last_token_ts") if times[key] is None]
        records.append(RequestRecord(
            request_id=str(row["request_id"]),
            arrival_s=arrival - base,
            prompt_tokens=int(row["input_toks"]),
            output_tokens=int(row["output_toks"]) if not missing else 0,
            scheduled_s=times["scheduled_ts"],
            first_token_s=times["first_token_ts"],
            last_token_s=times["last_token_ts"],
            error=f"incomplete: no {' or '.join(missing)}" if missing else None,
            extra={"queued_s": times["queued_ts"]},
        ))
    records.sort(key=lambda r: r.arrival_s)
    return records


def _first(*candidates: tuple[dict[str, Any], str]) -> Any:
    """The first value present among (mapping, key) candidates, else None."""
    for mapping, key in candidates:
        if isinstance(mapping, dict) and mapping.get(key) is not None:
            return mapping[key]
    return None


def vllm_run_settings(folder: str | Path) -> dict[str, Any]:
    """Engine settings of a recorded vLLM run, from `<folder>/meta.json`.

    Keys (None when the file does not say): `max_num_seqs`, `max_num_batched_tokens`, `block_size`,
    `gpu_memory_utilization`, `num_gpu_blocks`, `enable_prefix_caching`, `tp`, `pp`, `dp` (data-
    parallel engines, each with its own scheduler and KV cache), `expert_parallel`
    (`enable_expert_parallel`), `kv_cache_dtype`, `model`, `max_model_len`, `dtype`, `device_name`,
    `vllm_version`. Looked up in `engine_kwargs`, then `kv_cache`, then vLLM's `resolved_config`.
    """
    path = Path(folder) / "meta.json"
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise UserError("expected a JSON object", file=str(path))
    engine = meta.get("engine_kwargs") or {}
    kv = meta.get("kv_cache") or {}
    resolved = meta.get("resolved_config") or {}
    cache = resolved.get("cache_config") or {}
    sched = resolved.get("scheduler_config") or {}
    parallel = resolved.get("parallel_config") or {}
    return {
        "max_num_seqs": _first((engine, "max_num_seqs"), (sched, "max_num_seqs")),
        "max_num_batched_tokens": _first((engine, "max_num_batched_tokens"),
                                         (sched, "max_num_batched_tokens")),
        "block_size": _first((engine, "block_size"), (kv, "block_size"), (cache, "block_size")),
        "gpu_memory_utilization": _first((engine, "gpu_memory_utilization"), (kv, "gpu_memory_utilization"),
                                         (cache, "gpu_memory_utilization")),
        "num_gpu_blocks": _first((kv, "num_gpu_blocks"), (cache, "num_gpu_blocks")),
        "enable_prefix_caching": _first((engine, "enable_prefix_caching"), (kv, "enable_prefix_caching"),
                                        (cache, "enable_prefix_caching")),
        "tp": _first((engine, "tensor_parallel_size"), (parallel, "tensor_parallel_size")),
        "pp": _first((engine, "pipeline_parallel_size"), (parallel, "pipeline_parallel_size")),
        "dp": _first((engine, "data_parallel_size"), (parallel, "data_parallel_size")),
        "expert_parallel": _first((engine, "enable_expert_parallel"), (parallel, "enable_expert_parallel")),
        "kv_cache_dtype": _first((engine, "kv_cache_dtype"), (kv, "cache_dtype"), (cache, "cache_dtype")),
        "model": _first((meta, "model"), (engine, "model")),
        "max_model_len": _first((engine, "max_model_len"),),
        "dtype": _first((engine, "dtype"),),
        "device_name": _first((meta.get("hardware") or {}, "device_name"),),
        "vllm_version": _first((meta, "vllm_version"),),
    }


def import_vllm(path: str | Path, out: str | Path, *, slo: Slo | None = None) -> Summary:
    """Import a vLLM result (bench serve JSON, per-request JSONL, or a run folder holding
    `requests.jsonl` and `meta.json`) into the run folder `out`; returns its summary."""
    source = Path(path)
    claim_folder(out, "import-vllm", inputs=(source,))  # before reading: never into the source
    config: dict[str, Any] = {"command": "import-vllm", "source": str(source)}
    overrides: dict[str, Any] = {}
    if source.is_dir():
        records = import_vllm_requests(source / "requests.jsonl")
        config["format"] = "vllm-requests-jsonl"
        config["clock"] = _CLOCK_NOTE
        if (source / "meta.json").is_file():
            config["engine"] = vllm_run_settings(source)
    elif source.suffix == ".jsonl":
        records = import_vllm_requests(source)
        config["format"] = "vllm-requests-jsonl"
        config["clock"] = _CLOCK_NOTE
    elif source.suffix == ".json":
        records, facts = import_vllm_bench(source)
        config["format"] = "vllm-bench-serve-json"
        config["vllm"] = facts
        duration = facts.get("duration")
        if facts["arrival_times"] != "start_times" and isinstance(duration, int | float) and duration > 0:
            overrides["duration_s"] = float(duration)
    else:
        raise UserError(f"{str(source)!r}: expected a vLLM bench serve .json, a per-request .jsonl, "
                        "or a folder with requests.jsonl")
    builder = SummaryBuilder(slo)
    with RunWriter(out, config, keep_partial=False, flush_every=max(len(records), 1), slo=slo,
                   inputs=(source,)) as writer:
        for record in records:
            writer.add(record)
            builder.add(record)
        summary = builder.finish()
        if overrides:
            summary = _with_duration(summary, overrides["duration_s"])
        writer.finish(summary)
    return summary


def _with_duration(summary: Summary, duration_s: float) -> Summary:
    """The summary with its duration and per-second rates taken from a stated duration."""
    def per_second(amount: float) -> float:
        return amount / duration_s

    update: dict[str, Any] = {
        "duration_s": duration_s,
        "input_tokens_per_s": per_second(summary.input_tokens),
        "output_tokens_per_s": per_second(summary.output_tokens),
        "requests_per_s": per_second(summary.completed),
    }
    if summary.goodput_rps is not None and summary.duration_s > 0:
        update["goodput_rps"] = summary.goodput_rps * summary.duration_s / duration_s
    return summary.model_copy(update=update)
