"""Measured kernel tables (the schema of shared/data/kernels, NVIDIA AIConfigurator's layout).

A table is a Parquet (or CSV) file with one row per measured kernel call and a `latency` column in
**milliseconds**; loading converts it to seconds. The kinds and their required columns:

- ``gemm`` — ``m, n, k, gemm_dtype`` ([m × k] @ [k × n]; dtype ``bfloat16 | fp8 | fp8_block``).
- ``context_attention`` — ``batch_size, isl, num_heads, num_key_value_heads, head_dim,
  kv_cache_dtype`` (causal attention over `batch_size` fresh prompts of `isl` tokens);
  ``window_size`` optional (0 = full attention).
- ``generation_attention`` — ``batch_size, step, num_heads, num_key_value_heads, head_dim,
  kv_cache_dtype`` (one decode step of `batch_size` sequences with `step` tokens in the KV cache);
  ``window_size`` optional.
- ``allreduce`` — ``num_gpus, message_size``; the file counts **elements** (AIConfigurator's
  schema: nccl-tests bytes ÷ element size; engine_facts.md §2 "nccl_perf", "custom_allreduce_perf"),
  loading multiplies by the element size of ``nccl_dtype`` / ``allreduce_dtype`` (2 bytes if absent),
  so a loaded table's ``message_size`` is in **bytes**. NCCL tables with several collectives keep the
  rows whose ``op_name`` is ``all_reduce``.

The folder layout of shared/data/kernels is ``<device>/{gemm,attention,comm}/<framework>/<version>/
<kind>_perf.parquet``; a flat folder holding ``gemm_perf.parquet`` etc. (what `paretoserve profile`
writes) works too. Every problem with a table is a one-line `UserError` naming the file and column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from paretoserve.errors import UserError
from paretoserve.perf.fitted import OPTIONAL_COLUMNS

KernelKind = Literal["gemm", "context_attention", "generation_attention", "allreduce"]
KERNEL_KINDS: tuple[KernelKind, ...] = ("gemm", "context_attention", "generation_attention", "allreduce")

#: Integer shape columns each kind needs (besides `latency`).
SHAPE_COLUMNS: dict[str, tuple[str, ...]] = {
    "gemm": ("m", "n", "k"),
    "context_attention": ("batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim"),
    "generation_attention": ("batch_size", "step", "num_heads", "num_key_value_heads", "head_dim"),
    "allreduce": ("num_gpus", "message_size"),
}
#: Categorical columns each kind needs (the optional ones and their defaults: `OPTIONAL_COLUMNS`).
CATEGORY_COLUMNS: dict[str, tuple[str, ...]] = {
    "gemm": ("gemm_dtype",),
    "context_attention": ("kv_cache_dtype",),
    "generation_attention": ("kv_cache_dtype",),
    "allreduce": (),
}
#: File names (without suffix) of each kind, as in shared/data/kernels.
FILE_STEMS: dict[str, tuple[str, ...]] = {
    "gemm": ("gemm_perf",),
    "context_attention": ("context_attention_perf",),
    "generation_attention": ("generation_attention_perf",),
    "allreduce": ("custom_allreduce_perf", "nccl_perf"),
}


@dataclass(frozen=True)
class KernelTable:
    """One kind of measured kernel, validated.

    Attributes:
        kind: which kernel ("gemm", "context_attention", "generation_attention", "allreduce").
        shape: shape column name -> int64 array (one entry per row).
        category: categorical column name -> array of str (gemm_dtype, kv_cache_dtype) and, for
            attention, "window_size" as int64.
        latency_s: measured latency of each row in seconds.
        source: the file it was read from.
        device: the device string recorded in the table ("NVIDIA H100 80GB HBM3"), "" if absent.
        framework: engine name recorded in the table ("vllm"), "" if absent.
        version: engine version recorded in the table, "" if absent.
    """

    kind: KernelKind
    shape: dict[str, np.ndarray]
    category: dict[str, np.ndarray]
    latency_s: np.ndarray
    source: str
    device: str = ""
    framework: str = ""
    version: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.latency_s)

    def subset(self, mask: np.ndarray) -> KernelTable:
        """The rows where `mask` is true (same metadata)."""
        return KernelTable(self.kind, {k: v[mask] for k, v in self.shape.items()},
                           {k: v[mask] for k, v in self.category.items()}, self.latency_s[mask],
                           self.source, self.device, self.framework, self.version, self.extra)


def infer_kind(path: Path, table: pa.Table | None = None) -> KernelKind:
    """The kernel kind of a file, from its name (or its `op_name` column)."""
    stem = path.name.split(".")[0]
    for kind, stems in FILE_STEMS.items():
        if stem in stems:
            return kind  # type: ignore[return-value]
    if table is not None and "op_name" in table.column_names and table.num_rows:
        op = str(table.column("op_name")[0].as_py())
        if op in KERNEL_KINDS:
            return op  # type: ignore[return-value]
        if op == "all_reduce":
            return "allreduce"
    raise UserError("cannot tell which kernel this table measures; name it gemm_perf.parquet, "
                    "context_attention_perf.parquet, generation_attention_perf.parquet or "
                    "nccl_perf.parquet (or give an op_name column)", file=str(path))


def _read(path: Path) -> pa.Table:
    if not path.is_file():
        raise UserError("kernel table not found", file=str(path))
    try:
        if path.suffix.lower() == ".csv":
            return pacsv.read_csv(path)
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"cannot read kernel table ({first})", file=str(path)) from None


def load_kernel_table(path: str | Path, kind: KernelKind | None = None) -> KernelTable:
    """Read and validate one kernel table; latencies converted from ms to seconds.

    Raises `UserError` (one line, naming the file and column) for a missing file, an unreadable
    file, a missing column, an empty table, a non-numeric or non-positive latency or shape value.
    """
    path = Path(path)
    table = _read(path)
    kind = kind or infer_kind(path, table)
    if kind == "allreduce" and "op_name" in table.column_names:
        ops = table.column("op_name")
        table = table.filter(pc.equal(ops, "all_reduce"))
        if "nccl_dtype" in table.column_names:  # 16-bit activations are what TP all-reduces move
            half = table.filter(pc.is_in(table.column("nccl_dtype"), pa.array(["half", "bfloat16"])))
            table = half if half.num_rows else table
        if "backend" in table.column_names:  # vLLM runs decode under CUDA graphs
            graph = table.filter(pc.equal(table.column("backend"), "vllm_graph"))
            table = graph if graph.num_rows else table
    needed = (*SHAPE_COLUMNS[kind], *CATEGORY_COLUMNS[kind], "latency")
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise UserError(f"missing column '{missing[0]}' (a {kind} table needs {', '.join(needed)}; "
                        "latency in ms)", file=str(path), field=missing[0])
    if table.num_rows == 0:
        raise UserError(f"no rows (an empty {kind} table)", file=str(path))
    latency_ms = _numeric(table, "latency", path, float)
    _positive(latency_ms, "latency", path, "latencies are in ms and must be > 0")
    shape = {}
    for col in SHAPE_COLUMNS[kind]:
        values = _numeric(table, col, path, int)
        _positive(values, col, path, "shape values must be positive integers")
        shape[col] = values.astype(np.int64)
    category: dict[str, np.ndarray] = {}
    for col in CATEGORY_COLUMNS[kind]:
        values = table.column(col).to_pylist()
        if any(v is None or str(v).strip() == "" for v in values):
            raise UserError("has empty values", file=str(path), field=col)
        category[col] = np.array([str(v) for v in values])
    for col, default in OPTIONAL_COLUMNS.get(kind, {}).items():
        if col in table.column_names:
            values = _numeric(table, col, path, int)
            if (values < 0).any():
                raise UserError("must be >= 0 (0 = full attention)", file=str(path), field=col)
            category[col] = values.astype(np.int64)
        else:
            category[col] = np.full(table.num_rows, default, dtype=np.int64)
    if kind == "allreduce":
        shape["message_size"] = shape["message_size"] * _element_bytes(table, path)
    meta = {c: _first(table, c) for c in ("device", "framework", "version")}
    return KernelTable(kind, shape, category, latency_ms / 1e3, str(path), meta["device"],
                       meta["framework"].lower(), meta["version"])


#: Bytes per element of the dtype names all-reduce tables use.
_ELEMENT_BYTES: dict[str, int] = {"half": 2, "float16": 2, "bfloat16": 2, "int8": 1, "float": 4,
                                  "float32": 4, "fp8": 1}


def _element_bytes(table: pa.Table, path: Path) -> np.ndarray:
    """Bytes per element of each row of an all-reduce table (2 where no dtype column is given)."""
    for column in ("nccl_dtype", "allreduce_dtype"):
        if column in table.column_names:
            names = [str(v) for v in table.column(column).to_pylist()]
            unknown = sorted(set(names) - set(_ELEMENT_BYTES))
            if unknown:
                raise UserError(f"unknown dtype '{unknown[0]}' (expected one of {', '.join(_ELEMENT_BYTES)})",
                                file=str(path), field=column)
            return np.array([_ELEMENT_BYTES[n] for n in names], dtype=np.int64)
    return np.full(table.num_rows, 2, dtype=np.int64)


def _first(table: pa.Table, column: str) -> str:
    if column not in table.column_names or table.num_rows == 0:
        return ""
    value = table.column(column)[0].as_py()
    return "" if value is None else str(value)


def _numeric(table: pa.Table, column: str, path: Path, kind: type) -> np.ndarray:
    values = table.column(column)
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise UserError(f"must be numeric, found {values.type}", file=str(path), field=column)
    if values.null_count:
        raise UserError(f"has {values.null_count} empty value(s)", file=str(path), field=column)
    array = values.to_numpy().astype(np.float64)
    if not np.isfinite(array).all():
        raise UserError("has non-finite values", file=str(path), field=column)
    if kind is int and (array != np.round(array)).any():
        raise UserError("must hold integers", file=str(path), field=column)
    return array


def _positive(values: np.ndarray, column: str, path: Path, why: str) -> None:
    bad = np.flatnonzero(values <= 0)
    if bad.size:
        raise UserError(f"{bad.size} non-positive value(s), first at row {bad[0] + 1} ({values[bad[0]]:g}); "
                        f"{why}", file=str(path), field=column)


def _version_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key of a version string: numeric parts numerically, others after them as text."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-]", text))


def find_kernel_tables(directory: str | Path, *, framework: str = "vllm",
                       version: str | None = None) -> dict[str, KernelTable]:
    """Every kernel table under `directory`, by kind.

    `directory` is either one device's folder of the shared layout (``gemm/<framework>/<version>/
    ...``) — the newest version is used unless `version` is given — or a flat folder of
    ``*_perf.parquet`` files. Raises `UserError` when the folder does not exist or holds no table.
    """
    root = Path(directory)
    if not root.is_dir():
        raise UserError("kernel-table folder not found", file=str(root))
    found: dict[str, KernelTable] = {}
    for kind, stems in FILE_STEMS.items():
        path = pick_table(root, stems, framework, version)
        if path is not None:
            found[kind] = load_kernel_table(path, kind)  # type: ignore[arg-type]
    if not found:
        raise UserError("no kernel tables found (expected gemm_perf.parquet, "
                        "context_attention_perf.parquet, ... flat or under "
                        f"<kind>/{framework}/<version>/)", file=str(root))
    return found


def pick_table(root: Path, stems: tuple[str, ...], framework: str, version: str | None) -> Path | None:
    """A flat file if there is one; else the engine's (or NCCL's) table of `version`, newest if None.

    Stems are in order of preference (vLLM's custom all-reduce before NCCL's).
    """
    for stem in stems:
        for suffix in (".parquet", ".csv"):
            if (root / f"{stem}{suffix}").is_file():
                return root / f"{stem}{suffix}"
    for stem in stems:
        nested = [p for p in root.glob(f"*/*/*/{stem}.parquet")
                  if p.parts[-3].lower() in (framework.lower(), "nccl")]
        if not nested:
            continue
        exact = [p for p in nested if p.parts[-2] == version]
        return max(exact or nested, key=lambda p: _version_key(p.parts[-2]))
    return None
