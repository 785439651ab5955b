"""`paretoserve profile`: measure GEMM and attention kernels on this machine with PyTorch.

The shapes come from the chosen model (per device under `--tp`): its weight GEMMs (QKV, O,
gate-up, down; the LM head without `--quick`) at a range of token counts, causal context attention
over batch × prompt length, and decode attention over batch × context. Each shape is timed with
`torch` (CPU: float32, the dtype CPUs run fast; CUDA: bfloat16, with CUDA events) — one warm-up,
then repeats until a small time budget is used, median kept. Shapes whose datasheet-roofline time
exceeds a cap are skipped, so `--quick` stays around 10–20 s on two CPU cores.

The tables are written in the schema of shared/data/kernels (latency in ms) to a folder next to the
profile (``<out stem>.kernels/``), then fitted like `paretoserve calibrate --kernels` into a profile
of kind "local". PyTorch is an optional extra: ``pip install 'paretoserve[profile]'``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from paretoserve.cli.app import app, console, err_console
from paretoserve.errors import UserError

#: Token counts (GEMM m), prompt lengths, batch sizes and decode contexts measured.
GRIDS: dict[bool, dict[str, tuple[int, ...]]] = {
    True: {"m": (1, 4, 16, 64, 256), "ctx_batch": (1, 4), "isl": (16, 64, 256, 1024),
           "gen_batch": (1, 8, 32), "step": (64, 512, 2048)},
    False: {"m": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
            "ctx_batch": (1, 2, 4, 8, 16), "isl": (16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
            "gen_batch": (1, 2, 4, 8, 16, 32, 64, 128), "step": (16, 64, 256, 1024, 4096, 16384)},
}
#: Per-shape caps: skip a shape whose roofline time exceeds `cap_s`; time each for ~`budget_s`.
LIMITS: dict[bool, dict[str, float]] = {
    True: {"cap_s": 0.15, "budget_s": 0.02, "max_reps": 5},
    False: {"cap_s": 2.0, "budget_s": 0.2, "max_reps": 50},
}


@dataclass
class _Timer:
    """Times a callable: one warm-up, then repeats until `budget_s` is spent; median seconds."""

    torch: Any
    cuda: bool
    budget_s: float
    max_reps: int

    def __call__(self, fn: Callable[[], object]) -> float:
        fn()
        self._sync()
        times: list[float] = []
        spent = 0.0
        while len(times) < 2 or (spent < self.budget_s and len(times) < self.max_reps):
            if self.cuda:
                start = self.torch.cuda.Event(enable_timing=True)
                end = self.torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                elapsed = start.elapsed_time(end) / 1e3
            else:
                t0 = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - t0
            times.append(elapsed)
            spent += elapsed
        return statistics.median(times)

    def _sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise UserError("PyTorch is not installed; install the optional extra: "
                        "pip install 'paretoserve[profile]'") from None
    return torch


def model_gemm_shapes(model: Any, tp: int, lm_head: bool) -> list[tuple[str, int, int]]:
    """(name, n, k) of the model's distinct weight GEMMs on one of `tp` devices."""
    h = model.hidden_size
    shapes: dict[tuple[int, int], str] = {}
    for layer, _ in model.layer_groups:
        att, mlp = layer.attention, layer.mlp
        if att.kind == "gqa":
            kv = att.num_kv_heads * att.head_dim * (1 if att.kv_shared else 2)
            shapes.setdefault((max(1, (att.q_dim + kv) // tp), h), "qkv_proj")
            shapes.setdefault((h, max(1, att.o_in_dim // tp)), "o_proj")
        inter = mlp.intermediate or (mlp.expert_intermediate if mlp.kind == "moe" else 0)
        if inter:
            shapes.setdefault((max(1, (2 if mlp.gated else 1) * inter // tp), h), "gate_up")
            shapes.setdefault((h, max(1, inter // tp)), "down")
    if lm_head:
        shapes.setdefault((max(1, model.vocab_size // tp), h), "lm_head")
    return [(name, n, k) for (n, k), name in shapes.items()]


def model_attention(model: Any, tp: int) -> tuple[int, int, int] | None:
    """(query heads, KV heads, head dim) per device of the model's first GQA layer."""
    for layer in model.layers:
        att = layer.attention
        if att.kind == "gqa":
            return max(1, att.num_heads // tp), max(1, att.num_kv_heads // tp), att.head_dim
    return None


def measure(model: Any, hardware: Any, *, cuda: bool, quick: bool, tp: int = 1,
            progress: Callable[[str], None] | None = None) -> dict[str, dict[str, list]]:
    """Measure the model's kernels; returns column dicts per kind in the kernel-table schema."""
    torch = _import_torch()
    from paretoserve.perf.fitted import ideal_seconds

    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    dtype_name = "bfloat16" if cuda else "float32"
    grid, limits = GRIDS[quick], LIMITS[quick]
    timer = _Timer(torch, cuda, limits["budget_s"], int(limits["max_reps"]))
    cap = limits["cap_s"]
    say = progress or (lambda _msg: None)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape: int) -> Any:
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=dev, dtype=dtype)

    gemm: dict[str, list] = {c: [] for c in ("m", "n", "k", "gemm_dtype", "latency")}
    for name, n, k in model_gemm_shapes(model, tp, lm_head=not quick):
        weight = rand(k, n)
        for m in grid["m"]:
            ideal = float(ideal_seconds("gemm", hardware, {"m": [m], "n": [n], "k": [k]},
                                        {"gemm_dtype": dtype_name})[0])
            if ideal > cap:
                continue
            x = rand(m, k)
            with torch.inference_mode():
                seconds = timer(lambda x=x, w=weight: torch.matmul(x, w))
            for col, value in zip(("m", "n", "k", "gemm_dtype", "latency"),
                                  (m, n, k, dtype_name, seconds * 1e3), strict=True):
                gemm[col].append(value)
        say(f"GEMM {name} [m × {k}] @ [{k} × {n}]")
        del weight
    out = {"gemm": gemm}
    heads = model_attention(model, tp)
    if heads is None:
        return out
    h, kv, d = heads
    sdpa = torch.nn.functional.scaled_dot_product_attention
    category = {"kv_cache_dtype": dtype_name, "window_size": 0}
    cols = ("batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim", "kv_cache_dtype",
            "window_size", "latency")
    ctx: dict[str, list] = {c: [] for c in cols}
    for b in grid["ctx_batch"]:
        for s in grid["isl"]:
            shape = {"batch_size": [b], "isl": [s], "num_heads": [h], "num_key_value_heads": [kv],
                     "head_dim": [d]}
            if float(ideal_seconds("context_attention", hardware, shape, category)[0]) > cap:
                continue
            q, key, val = rand(b, h, s, d), rand(b, kv, s, d), rand(b, kv, s, d)
            with torch.inference_mode():
                seconds = timer(lambda q=q, key=key, val=val: sdpa(q, key, val, is_causal=True,
                                                                   enable_gqa=True))
            for col, value in zip(cols, (b, s, h, kv, d, dtype_name, 0, seconds * 1e3), strict=True):
                ctx[col].append(value)
    say(f"context attention: {len(ctx['latency'])} shapes")
    gen_cols = tuple("step" if c == "isl" else c for c in cols)
    dec: dict[str, list] = {c: [] for c in gen_cols}
    for b in grid["gen_batch"]:
        for s in grid["step"]:
            shape = {"batch_size": [b], "step": [s], "num_heads": [h], "num_key_value_heads": [kv],
                     "head_dim": [d]}
            if float(ideal_seconds("generation_attention", hardware, shape, category)[0]) > cap:
                continue
            q, key, val = rand(b, h, 1, d), rand(b, kv, s, d), rand(b, kv, s, d)
            with torch.inference_mode():
                seconds = timer(lambda q=q, key=key, val=val: sdpa(q, key, val, enable_gqa=True))
            for col, value in zip(gen_cols, (b, s, h, kv, d, dtype_name, 0, seconds * 1e3), strict=True):
                dec[col].append(value)
    say(f"generation attention: {len(dec['latency'])} shapes")
    out["context_attention"] = ctx
    out["generation_attention"] = dec
    return out


def write_tables(columns: dict[str, dict[str, list]], folder: Path, *, device_name: str,
                 framework: str, version: str) -> None:
    """Write measured columns as <kind>_perf.parquet files (shared/data/kernels schema)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for kind, cols in columns.items():
        if not cols["latency"]:
            continue
        rows = len(cols["latency"])
        table = pa.table({"framework": [framework] * rows, "version": [version] * rows,
                          "device": [device_name] * rows, "op_name": [kind] * rows,
                          "kernel_source": [f"{framework}_{kind}"] * rows, **cols})
        pq.write_table(table, folder / f"{kind}_perf.parquet")


@app.command("profile")
def profile_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Bundled model name or path to a config.json."),
    out: Annotated[Path, typer.Option("--out", "-o", help="Profile to write (.yaml).")] = Path(
        "profiles/local.yaml"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    hardware: str | None = typer.Option(
        None, "--hardware", "-H",
        help="Catalog device the efficiencies are relative to (default: local_cpu for cpu; the GPU's "
             "own name for cuda)."),
    tp: int = typer.Option(1, "--tp", min=1, help="Measure the per-device shapes of this TP degree."),
    quick: bool = typer.Option(False, "--quick", help="A small grid (~10-20 s on 2 CPU cores)."),
) -> None:
    """Measure GEMM and attention kernels of a model on this machine and fit a local profile."""
    from paretoserve.calibrate import calibrate_kernels
    from paretoserve.catalog.device import load_device
    from paretoserve.catalog.model import load_model
    from paretoserve.outputs import building_folder, claim_folder
    from paretoserve.perf.profile import claim_profile_path, save_profile

    if device not in ("cpu", "cuda"):
        raise UserError(f"--device {device!r}: expected cpu or cuda")
    folder = out.with_name(f"{out.stem}.kernels")
    claim_profile_path(out, inputs=(model,))  # before measuring: never over a user's file
    claim_folder(folder, "profile", inputs=(model,))
    spec = load_model(model)
    try:
        torch = _import_torch()
    except UserError as exc:  # printed here: the shared error line would read "[profile]" as markup
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise UserError("--device cuda: this PyTorch sees no CUDA device (use --device cpu)")
    device_name = torch.cuda.get_device_name(0) if cuda else "local_cpu"
    try:
        spec_hw = load_device(hardware or device_name)
    except UserError:
        raise UserError(f"GPU '{device_name}' is not in the hardware catalog; pass --hardware NAME or a "
                        "device YAML") from None
    start = time.perf_counter()
    columns = measure(spec, spec_hw, cuda=cuda, quick=quick, tp=tp,
                      progress=lambda msg: console.print(f"[dim]{escape(msg)}[/]"))
    with building_folder(folder, "profile", inputs=(model,)) as tmp:
        write_tables(columns, tmp, device_name=spec_hw.name if hardware else device_name,
                     framework="torch", version=torch.__version__)
    profile = calibrate_kernels(folder, spec_hw, framework="torch")
    profile.kind = "local"
    profile.notes = (f"{spec.name} shapes (tp={tp}) measured with torch {torch.__version__} on "
                     f"{device_name} ({'quick' if quick else 'full'} grid)")
    path = save_profile(profile, out, inputs=(model,))
    from paretoserve.cli.calibrate_cmd import print_fit_quality

    print_fit_quality(profile)
    console.print(f"wrote {path} and tables in {folder}/ ({time.perf_counter() - start:.1f} s)")
