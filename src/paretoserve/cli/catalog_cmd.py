"""`paretoserve catalog`: list and show the bundled models and hardware."""

from __future__ import annotations

import typer
from rich.table import Table

from paretoserve.catalog.device import DeviceSpec, list_devices, load_device
from paretoserve.catalog.model import ModelSpec, bundled_model_names, load_model
from paretoserve.cli.app import app, console
from paretoserve.errors import UserError

catalog_app = typer.Typer(help="List and show bundled models and hardware.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")


@catalog_app.command("models")
def models_cmd() -> None:
    """List the bundled model configs."""
    table = Table(title="Models (Hugging Face config.json)")
    for col in ("name", "architecture", "layers", "params", "active", "weights", "KV KiB/token",
                "max context"):
        table.add_column(col, justify="left" if col in ("name", "architecture", "weights") else "right")
    for name in bundled_model_names():
        m = load_model(name)
        table.add_row(m.name, m.architecture, str(m.num_layers), f"{m.params.total / 1e9:.2f} B",
                      f"{m.params.active / 1e9:.2f} B", m.weight_dtype,
                      f"{m.kv_bytes_per_token() / 1024:.1f}", f"{m.max_position_embeddings:,}")
    console.print(table)


@catalog_app.command("hardware")
def hardware_cmd() -> None:
    """List the accelerators in the catalog."""
    table = Table(title="Hardware (dense peaks)")
    for col in ("name", "device", "bf16 TFLOP/s", "fp8 TFLOP/s", "memory GB", "bandwidth TB/s",
                "power W", "$/hour"):
        table.add_column(col, justify="left" if col in ("name", "device") else "right")
    for d in list_devices():
        fp8 = d.flops.get("fp8")
        table.add_row(d.name, d.display_name, f"{d.peak_flops('bf16') / 1e12:,.1f}",
                      f"{fp8 / 1e12:,.1f}" if fp8 else "—", f"{d.mem_capacity / 1e9:,.0f}",
                      f"{d.mem_bandwidth / 1e12:.2f}", f"{d.power_max:,.0f}", f"{d.price_per_hour:.2f}")
    console.print(table)


@catalog_app.command("show")
def show_cmd(name: str = typer.Argument(..., help="A model or hardware name (or file).")) -> None:
    """Print one model or device with every field and its source."""
    try:
        _show_model(load_model(name))
        return
    except UserError as model_error:
        try:
            device = load_device(name)
        except UserError:
            raise UserError(f"'{name}' is neither a bundled model nor a catalog device "
                            f"({model_error})") from None
    _show_device(device)


def _show_model(m: ModelSpec) -> None:
    p = m.params
    console.print(f"[bold]{m.name}[/] ({m.architecture}) from {m.source}")
    console.print(f"hidden {m.hidden_size}, vocab {m.vocab_size:,}, layers {m.num_layers}, "
                  f"tied embeddings {m.tie_embeddings}, weights {m.weight_dtype}, "
                  f"max context {m.max_position_embeddings:,}")
    console.print(f"parameters {p.total:,} total, {p.active:,} active per token "
                  f"(embedding {p.embedding:,}, LM head {p.lm_head:,})")
    console.print(f"KV cache {m.kv_bytes_per_token():,.0f} bytes/token (bf16)")
    table = Table(title="Layer kinds")
    for col in ("count", "mixer", "heads/kv/dim", "window", "FFN", "experts (top-k × width)"):
        table.add_column(col)
    for layer, count in m.layer_groups:
        a, f = layer.attention, layer.mlp
        heads = (f"{a.num_heads}/{a.num_kv_heads}/{a.head_dim}" if a.kind in ("gqa", "mla")
                 else f"{a.mamba_heads}×{a.mamba_head_dim}" if a.kind == "mamba" else "—")
        experts = f"{f.num_experts} ({f.top_k} × {f.expert_intermediate})" if f.kind == "moe" else "—"
        table.add_row(str(count), a.kind, heads, str(a.window or "—"), str(f.intermediate or "—"), experts)
    console.print(table)


def _show_device(d: DeviceSpec) -> None:
    table = Table(title=f"{d.display_name} ({d.name})")
    table.add_column("field")
    table.add_column("value", justify="right")
    table.add_column("source")
    for field, value in d.model_dump().items():
        if field in ("sources", "flops", "name", "display_name"):
            continue
        table.add_row(field, str(value), d.sources.get(field, ""))
    for dtype, value in d.flops.items():
        table.add_row(f"flops[{dtype}]", f"{value / 1e12:,.1f} T", d.sources.get("flops", ""))
    console.print(table)
