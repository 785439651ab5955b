"""`paretoserve catalog`: list and show the bundled models and hardware, as tables or JSON.

The JSON holds the same facts as the tables in SI units: counts and tokens as integers, bytes,
bytes/s, FLOP/s, seconds, watts and USD per hour, with the unit in the key name or listed under
"units" (the device fields, see `catalog.device.UNITS`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from paretoserve.cli.app import app, console
from paretoserve.errors import UserError
from paretoserve.report.tables import compact_table

if TYPE_CHECKING:
    from paretoserve.catalog.device import DeviceSpec
    from paretoserve.catalog.model import ModelSpec

catalog_app = typer.Typer(help="List and show bundled models and hardware.", no_args_is_help=True,
                          rich_markup_mode=None)
app.add_typer(catalog_app, name="catalog")

_JSON = typer.Option(False, "--json", help="Print machine-readable JSON (SI units) instead of the table.")
#: Console width from which `catalog models` also shows each model's architecture.
_WIDE = 110


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def model_facts(m: ModelSpec) -> dict[str, Any]:
    """One model's row of `catalog models` (params in parameters, KV bytes for a bf16 cache)."""
    return {"name": m.name, "architecture": m.architecture, "layers": m.num_layers,
            "params_total": m.params.total, "params_active": m.params.active, "weight_dtype": m.weight_dtype,
            "kv_bytes_per_token": m.kv_bytes_per_token(), "max_context_tokens": m.max_position_embeddings}


@catalog_app.command("models")
def models_cmd(as_json: bool = _JSON) -> None:
    """List the bundled model configs."""
    from paretoserve.catalog.model import bundled_model_names, load_model

    rows = [model_facts(load_model(name)) for name in bundled_model_names()]
    if as_json:
        _print_json({"models": rows})
        return
    wide = console.width >= _WIDE
    table = compact_table("Models (Hugging Face config.json; params in billions, KV cache in bf16)")
    table.add_column("name", no_wrap=True)
    if wide:
        table.add_column("architecture", no_wrap=True)
    for col in ("layers", "params\ntotal", "params\nactive", "dtype", "KV KiB\n/token", "max\ncontext"):
        table.add_column(col, justify="left" if col == "dtype" else "right", no_wrap=True)
    for r in rows:
        table.add_row(r["name"], *([r["architecture"]] if wide else []), str(r["layers"]),
                      f"{r['params_total'] / 1e9:.4g}", f"{r['params_active'] / 1e9:.4g}", r["weight_dtype"],
                      f"{r['kv_bytes_per_token'] / 1024:.1f}", _tokens(r["max_context_tokens"]))
    console.print(table)
    if not wide:
        console.print("[dim]architectures: catalog show NAME, or a terminal of 110+ columns[/]")


def _tokens(count: int) -> str:
    """A context length as model cards write it: 131,072 -> "128K" (K = 1,024 tokens)."""
    return f"{count // 1024:,}K" if count % 1024 == 0 else f"{count:,}"


@catalog_app.command("hardware")
def hardware_cmd(as_json: bool = _JSON) -> None:
    """List the accelerators in the catalog."""
    from paretoserve.catalog.device import UNITS, list_devices

    devices = list_devices()
    if as_json:
        _print_json({"units": UNITS, "devices": [d.model_dump() for d in devices]})
        return
    table = compact_table("Hardware (dense peak FLOP/s; memory the runtime exposes)")
    table.add_column("name", no_wrap=True)
    table.add_column("device")
    for col in ("bf16\nTFLOP/s", "fp8\nTFLOP/s", "memory\nGiB", "memory\nGB/s", "power\nW", "price\n$/h"):
        table.add_column(col, justify="right", no_wrap=True)
    for d in devices:
        fp8 = d.flops.get("fp8")
        table.add_row(d.name, d.display_name, f"{d.peak_flops('bf16') / 1e12:,.0f}",
                      f"{fp8 / 1e12:,.0f}" if fp8 else "—", f"{d.mem_capacity / 2**30:,.1f}",
                      f"{d.mem_bandwidth / 1e9:,.0f}", f"{d.power_max:,.0f}", f"{d.price_per_hour:.2f}")
    console.print(table)


@catalog_app.command("show")
def show_cmd(name: str = typer.Argument(..., help="A model or hardware name (or file)."),
             as_json: bool = _JSON) -> None:
    """Print one model or device with every field and its source."""
    from paretoserve.catalog.device import UNITS, load_device
    from paretoserve.catalog.model import load_model

    try:
        model = load_model(name)
    except UserError as model_error:
        try:
            device = load_device(name)
        except UserError:
            raise UserError(f"'{name}' is neither a bundled model nor a catalog device "
                            f"({model_error})") from None
        if as_json:
            _print_json({"units": UNITS, "device": device.model_dump()})
        else:
            _show_device(device)
        return
    if as_json:
        _print_json({"model": _model_details(model)})
    else:
        _show_model(model)


def _model_details(m: ModelSpec) -> dict[str, Any]:
    """Everything `catalog show MODEL` prints, JSON-ready."""
    return {**model_facts(m), "source": m.source, "hidden_size": m.hidden_size, "vocab_size": m.vocab_size,
            "tie_embeddings": m.tie_embeddings, "params": asdict(m.params),
            "layer_groups": [{"count": count, "attention": asdict(layer.attention), "mlp": asdict(layer.mlp),
                              "norms": layer.norms} for layer, count in m.layer_groups]}


def _show_model(m: ModelSpec) -> None:
    p = m.params
    console.print(f"[bold]{escape(m.name)}[/] ({escape(m.architecture)}) from {escape(m.source)}",
                  highlight=False)
    console.print(f"hidden {m.hidden_size}, vocab {m.vocab_size:,}, layers {m.num_layers}, "
                  f"tied embeddings {m.tie_embeddings}, weights {m.weight_dtype}, "
                  f"max context {m.max_position_embeddings:,} tokens", markup=False)
    console.print(f"parameters {p.total:,} total, {p.active:,} active per token "
                  f"(embedding {p.embedding:,}, LM head {p.lm_head:,})", markup=False)
    console.print(f"KV cache {m.kv_bytes_per_token():,.0f} bytes/token (bf16)", markup=False)
    table = compact_table("Layer kinds")
    for col in ("count", "mixer", "heads/kv/dim", "window", "FFN", "experts (top-k × width)"):
        table.add_column(col)
    for layer, count in m.layer_groups:
        a, f = layer.attention, layer.mlp
        heads = (f"{a.num_heads}/{a.num_kv_heads}/{a.head_dim}" if a.kind in ("gqa", "mla")
                 else f"{a.mamba_heads}×{a.mamba_head_dim}" if a.kind == "mamba" else "—")
        experts = f"{f.num_experts} ({f.top_k} × {f.expert_intermediate})" if f.kind == "moe" else "—"
        table.add_row(str(count), a.kind, heads, str(a.window or "—"), str(f.intermediate or "—"), experts)
    console.print(table)


#: How `catalog show` prints a value of each SI unit (`catalog.device.UNITS`).
_SHOW_UNITS = {
    "FLOP/s": lambda v: f"{v / 1e12:,.1f} TFLOP/s",
    "B/s": lambda v: f"{v / 1e9:,.0f} GB/s",
    "B": lambda v: f"{v / 2**30:,.1f} GiB ({v / 1e9:,.1f} GB)",
    "s": lambda v: f"{v * 1e6:,.0f} µs",
    "W": lambda v: f"{v:,.0f} W",
    "USD/h": lambda v: f"${v:,.2f}/h",
    "devices": lambda v: f"{v:,}",
}


def _show_device(d: DeviceSpec) -> None:
    from paretoserve.catalog.device import UNITS

    table = compact_table(f"{d.display_name} ({d.name})")
    table.add_column("field", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_row("vendor", d.vendor)
    table.add_row("kind", d.kind)
    for dtype, value in d.flops.items():
        table.add_row(f"peak {dtype}", _SHOW_UNITS[UNITS["flops"]](value))
    for field, unit in UNITS.items():
        if field != "flops":
            table.add_row(field, _SHOW_UNITS[unit](getattr(d, field)))
    table.add_row("price_date", d.price_date)
    console.print(table)
    console.print("[bold]Sources[/]")
    for field, source in d.sources.items():
        console.print(f"{field}: {source}", markup=False, highlight=False)
    if d.notes:
        console.print(f"notes: {d.notes}", markup=False, highlight=False)
