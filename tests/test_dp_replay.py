"""Multi-GPU measured vLLM runs: `import-vllm` reads TP/PP/DP/EP and the KV dtype from meta.json; the
replay (`validate --measured`, `calibrate --from`) runs DP replicas behind a least-outstanding router,
and an expert-parallel MoE run is refused in one line instead of being replayed as another deployment.

The runs are small synthetic vLLM folders (meta.json + requests.jsonl in vLLM's per-request format).
With a step time of 10 ms + 10 µs per token, two 1,000-token prompts arriving together take
0.01 + 1000e-5 = 20 ms each on two replicas, and 0.01 + 2000e-5 = 30 ms as one batch on one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import paretoserve.cli.commands  # noqa: F401  (registers the commands)
from paretoserve.bench.importers import import_vllm
from paretoserve.calibrate.run_fit import run_setup, simulate_setup
from paretoserve.cli.app import app
from paretoserve.errors import UserError
from paretoserve.perf.constant import LinearStepModel
from paretoserve.runs import read_run

STEP = LinearStepModel(0.01, per_token_s=1e-5)


def _vllm_folder(folder: Path, *, model: str, dp: int, ep: bool, prompts: int = 2) -> Path:
    folder.mkdir(parents=True)
    meta = {"model": model, "vllm_version": "0.19.0",
            "engine_kwargs": {"model": model, "tensor_parallel_size": 1, "pipeline_parallel_size": 1,
                              "data_parallel_size": dp, "enable_expert_parallel": ep, "max_num_seqs": 8,
                              "max_num_batched_tokens": 4096, "kv_cache_dtype": "fp8"},
            "kv_cache": {"num_gpu_blocks": 1000, "block_size": 16, "enable_prefix_caching": False},
            "hardware": {"device_name": "NVIDIA H100 80GB HBM3"}}
    (folder / "meta.json").write_text(json.dumps(meta))
    lines = []
    for i in range(prompts):  # all arrive at t = 0; measured times are placeholders
        lines.append({"request_id": f"r{i}", "input_toks": 1000, "output_toks": 10, "arrival_time": 100.0,
                      "queued_ts": 5.0, "scheduled_ts": 5.0, "first_token_ts": 5.05, "last_token_ts": 5.2})
    (folder / "requests.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def _imported(tmp_path: Path, **kwargs) -> Path:
    source = _vllm_folder(tmp_path / "vllm", **kwargs)
    import_vllm(source, tmp_path / "run")
    return tmp_path / "run"


def test_two_replica_dp_run_replays_as_two_replicas(tmp_path):
    run = read_run(_imported(tmp_path, model="meta-llama/Llama-3.1-8B", dp=2, ep=False))
    engine = run.config["engine"]
    assert (engine["tp"], engine["pp"], engine["dp"], engine["expert_parallel"], engine["kv_cache_dtype"]) == \
        (1, 1, 2, False, "fp8")
    setup = run_setup(run)
    assert (setup.replicas, setup.kv_dtype, setup.kv_tokens) == (2, "fp8", 16000)
    assert setup.settings()["dp"] == 2 and setup.notes["dp"] == "run folder"
    records = simulate_setup(setup, STEP)
    assert sorted(r.replica for r in records) == [0, 1]
    assert [r.ttft_s for r in records] == pytest.approx([0.02, 0.02])
    # The same run forced to one engine shares one batch: the override flag is honoured.
    single = simulate_setup(run_setup(run, dp=1), STEP)
    assert {r.replica for r in single} == {0}
    assert [r.ttft_s for r in single] == pytest.approx([0.03, 0.03])


def test_expert_parallel_moe_run_is_refused_in_one_line(tmp_path):
    folder = _imported(tmp_path, model="Qwen/Qwen3-30B-A3B", dp=2, ep=True)
    with pytest.raises(UserError, match=r"expert parallelism \(EP 2 = TP 1 × DP 2\)") as info:
        run_setup(read_run(folder))
    assert "\n" not in str(info.value)
    result = CliRunner().invoke(app, ["validate", "--measured", str(folder)])
    assert result.exit_code == 2
    assert "no expert parallelism yet" in result.output and "Traceback" not in result.output
    # A run that did not use it (the flag corrects a wrong record) replays on two replicas.
    assert run_setup(read_run(folder), expert_parallel=False).replicas == 2


def test_expert_parallel_flag_on_a_dense_model_changes_nothing(tmp_path):
    setup = run_setup(read_run(_imported(tmp_path, model="meta-llama/Llama-3.1-8B", dp=2, ep=True)))
    assert setup.replicas == 2


def test_validate_replays_a_dp_run_with_json(tmp_path):
    folder = _imported(tmp_path, model="meta-llama/Llama-3.1-8B", dp=2, ep=False)
    result = CliRunner().invoke(app, ["validate", "--measured", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["replay"]["dp"] == 2 and data["replay"]["kv_dtype"] == "fp8" and data["estimated"] is True
    assert data["latency_s"]["ttft"]["mean"]["measured"] == pytest.approx(0.05)
