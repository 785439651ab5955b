"""`paretoserve profile`: measures kernels with PyTorch (skipped cleanly when torch is absent)."""

from __future__ import annotations

import builtins
import importlib.util

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from paretoserve.cli import commands  # noqa: F401  (registers the commands)
from paretoserve.cli.app import app
from paretoserve.errors import UserError

try:
    HAS_TORCH = importlib.util.find_spec("torch") is not None
except (ImportError, ValueError):  # a blocked or broken install
    HAS_TORCH = False
needs_torch = pytest.mark.skipif(not HAS_TORCH,
                                 reason="PyTorch not installed (pip install 'paretoserve[profile]')")


def test_missing_torch_is_a_one_line_hint(monkeypatch):
    from paretoserve.cli import profile_cmd

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(UserError) as info:
        profile_cmd._import_torch()
    assert "pip install 'paretoserve[profile]'" in str(info.value)
    result = CliRunner().invoke(app, ["profile", "--model", "Qwen3-0.6B", "--quick", "--out", "p.yaml"])
    assert result.exit_code == 2 and "pip install 'paretoserve[profile]'" in result.output
    assert "Traceback" not in result.output


def test_bad_device_flag(tmp_path):
    result = CliRunner().invoke(app, ["profile", "--model", "Qwen3-0.6B", "--device", "tpu",
                                      "--out", str(tmp_path / "p.yaml")])
    assert result.exit_code == 2 and "expected cpu or cuda" in result.output


@needs_torch
def test_quick_profile_writes_tables_and_a_usable_profile(tmp_path):
    from paretoserve.calibrate.kernel_tables import find_kernel_tables
    from paretoserve.perf.calibrated import Calibrated, load_step_model
    from paretoserve.perf.profile import load_profile
    from paretoserve.perf.shape import PrefillChunk, StepShape

    out = tmp_path / "profiles" / "local.yaml"
    result = CliRunner().invoke(app, ["profile", "--model", "Qwen3-0.6B", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    folder = out.with_name("local.kernels")
    tables = find_kernel_tables(folder, framework="torch")
    assert set(tables) == {"gemm", "context_attention", "generation_attention"}
    gemm = pq.read_table(folder / "gemm_perf.parquet")
    assert {"m", "n", "k", "gemm_dtype", "latency", "device"} <= set(gemm.column_names)
    assert (tables["gemm"].latency_s > 0).all()
    profile = load_profile(out)
    assert profile.kind == "local" and profile.device == "local_cpu" and profile.engine == "torch"
    model = load_step_model("Qwen3-0.6B", "local_cpu", profile=str(out))
    assert isinstance(model, Calibrated)
    step = model.step_time(StepShape(prefill=(PrefillChunk(64),), decode=(100, 200)))
    assert step.seconds > 0 and {"mlp", "attn.prefill", "attn.decode"} <= {op.name for op in step.ops}
    assert model.decode_run_seconds(4, 400, 50) == pytest.approx(
        sum(model.decode_seconds(4, 400 + 4 * i) for i in range(50)), rel=1e-12)
