"""Profile files: fitted latency-model coefficients for one device (+ engine).

A profile is a YAML file with the metadata and global coefficients, plus (for kernel fits) a
sibling Parquet file with the filled efficiency grids::

    profiles/h100.yaml                       # what a person reads and edits
    profiles/h100.3f2a9c01d4e7.grids.parquet # ln e of every grid node (named by content hash)

YAML fields:

    format: paretoserve-profile/1
    kind: kernels | transfer | run | local      # how it was made
    device: h100_sxm                            # catalog name the efficiencies are relative to
    engine: vllm
    engine_version: 0.19.0
    source: where the measurements came from
    created: 2025-06-01T12:00:00Z
    coefficients: {compute_scale, memory_scale, step_overhead_s, token_overhead_s}
    mla: {context: {gemm, gemm_fp8, attention, memory, fixed_s}, generation: {...}}  # MLA tables only
    fit: {gemm: {points, loo_median, loo_p90}, ...}   # quality, for people
    transfer: {reference, slope, intercepts, points, residual}   # kind: transfer only
    grids_file: h100.3f2a9c01d4e7.grids.parquet   # absent when there are no kernel fits
    grids_sha256: ...
    grids:            # one entry per grid; its nodes are rows [offset, offset + size) of the file
      - {kernel: gemm, group: {gemm_dtype: bfloat16}, axes: {m: [...], n: [...], k: [...]},
         align: [16, 4], offset: 0}

The Parquet file has columns `log_eff` (float64, natural log of the efficiency) and `measured`
(bool), nodes in C order of each grid's axes. Saving writes the Parquet file under a new,
content-addressed name, then replaces the YAML atomically, then removes the previous grids file —
a reader always sees a complete pair.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from paretoserve.atomic import write_bytes_atomic, write_text_atomic
from paretoserve.errors import UserError
from paretoserve.outputs import Inputs, claim_file
from paretoserve.perf.fitted import Coefficients, Grid, KernelFit
from paretoserve.perf.mla import MLA_PHASES, MlaConstants
from paretoserve.textfiles import read_yaml

FORMAT = "paretoserve-profile/1"
PROFILE_KINDS = ("kernels", "transfer", "run", "local")


@dataclass
class Profile:
    """Fitted latency-model coefficients for one device.

    Attributes:
        device: catalog device name the efficiencies are relative to.
        kind: "kernels" (fitted from kernel tables), "transfer" (few-sample transfer from another
            device), "run" (global coefficients from a bench run), "local" (`paretoserve profile`).
        engine: serving engine the kernels were measured under ("vllm"), "" if unknown.
        engine_version: its version, "" if unknown.
        source: where the measurements came from.
        created: ISO-8601 UTC time of the fit.
        coefficients: global end-to-end corrections.
        kernels: fitted kernel efficiencies by kind (empty for a "run" profile).
        mla: fitted MLA constants by phase ("context", "generation"; empty without MLA tables).
        fit: fit quality by kernel kind (points, leave-one-out median/p90 as fractions).
        transfer: the transfer map and its reference device (kind "transfer").
        notes: free text.
    """

    device: str
    kind: str = "kernels"
    engine: str = ""
    engine_version: str = ""
    source: str = ""
    created: str = ""
    coefficients: Coefficients = field(default_factory=Coefficients)
    kernels: dict[str, KernelFit] = field(default_factory=dict)
    mla: dict[str, MlaConstants] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    transfer: dict[str, Any] | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if not self.created:
            self.created = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _grids_parquet(kernels: dict[str, KernelFit]) -> tuple[bytes, list[dict[str, Any]]]:
    """The Parquet file of every grid's nodes (zstd) and the YAML entry of each grid."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    entries: list[dict[str, Any]] = []
    values: list[np.ndarray] = []
    measured: list[np.ndarray] = []
    offset = 0
    for kind, fit in kernels.items():
        for key, grid in fit.groups.items():
            entries.append({
                "kernel": kind,
                "group": dict(zip(fit.group_columns, key, strict=True)),
                "axes": {name: [_num(v) for v in vals] for name, vals in zip(grid.axes, grid.values,
                                                                              strict=True)},
                "align": list(grid.align),
                "offset": offset,
                "points": fit.points,
            })
            values.append(grid.log_eff.ravel())
            measured.append(grid.measured.ravel())
            offset += grid.log_eff.size
    table = pa.table({
        "log_eff": pa.array(np.concatenate(values) if values else np.zeros(0), pa.float64()),
        "measured": pa.array(np.concatenate(measured) if measured else np.zeros(0, bool), pa.bool_()),
    })
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue(), entries


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def claim_profile_path(path: str | os.PathLike[str], *, inputs: Inputs = ()) -> Path:
    """Check that a profile may be written at `path`: a new .yaml file or an earlier profile, and
    none of `inputs` (`paretoserve.outputs`); returns the path. UserError otherwise."""
    if Path(path).suffix.lower() not in (".yaml", ".yml"):
        raise UserError("a profile is written as a .yaml file (its grids go next to it)", file=str(path))
    return claim_file(path, kind="profile", is_ours=_is_profile, inputs=inputs)


def _is_profile(path: Path) -> bool:
    """Whether `path` holds a paretoserve profile (YAML whose format is `FORMAT`)."""
    try:
        if path.stat().st_size > 16 << 20:  # a profile is a few kB (its grids are in Parquet)
            return False
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT


def save_profile(profile: Profile, path: str | os.PathLike[str], *, inputs: Inputs = ()) -> Path:
    """Write `profile` to `path` (YAML) and its grids next to it; returns the YAML path.

    `path` must be new or an earlier profile, and none of `inputs` (the files the profile was
    fitted from); anything else is a `UserError`.
    """
    target = claim_profile_path(path, inputs=inputs)
    target.parent.mkdir(parents=True, exist_ok=True)
    previous = _previous_grids(target)
    doc: dict[str, Any] = {
        "format": FORMAT, "kind": profile.kind, "device": profile.device, "engine": profile.engine,
        "engine_version": profile.engine_version, "source": profile.source, "created": profile.created,
        "coefficients": profile.coefficients.to_dict(), "fit": profile.fit,
    }
    if profile.mla:
        doc["mla"] = {phase: c.to_dict() for phase, c in profile.mla.items()}
    if profile.transfer:
        doc["transfer"] = profile.transfer
    if profile.notes:
        doc["notes"] = profile.notes
    grids_name = None
    if profile.kernels:
        data, entries = _grids_parquet(profile.kernels)
        digest = hashlib.sha256(data).hexdigest()
        grids_name = f"{target.stem}.{digest[:12]}.grids.parquet"
        write_bytes_atomic(target.parent / grids_name, data)
        doc.update(grids_file=grids_name, grids_sha256=digest, grids=entries)
    text = yaml.safe_dump(_plain(doc), sort_keys=False, default_flow_style=None, width=100)
    write_text_atomic(target, text)
    if previous and previous != grids_name:
        (target.parent / previous).unlink(missing_ok=True)
    return target


def _plain(value: Any) -> Any:
    """numpy scalars and tuples -> plain Python for YAML."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _previous_grids(target: Path) -> str | None:
    try:
        old = yaml.safe_load(target.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    name = old.get("grids_file") if isinstance(old, dict) else None
    ours = isinstance(name, str) and "/" not in name and name.startswith(f"{target.stem}.") \
        and name.endswith(".grids.parquet")
    return name if ours else None


def load_profile(path: str | os.PathLike[str], *, device: str | None = None) -> Profile:
    """Read a profile; with `device`, a profile fitted for another device is a `UserError`.

    Every problem (missing file, bad YAML, missing field, grids file missing or not matching its
    hash) is a one-line `UserError` naming the file.
    """
    source = Path(path)
    if not source.is_file():
        raise UserError("profile not found (write one with `paretoserve calibrate` or "
                        "`paretoserve profile`)", file=str(source))
    doc = read_yaml(source)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserError(f"not a paretoserve profile (expected 'format: {FORMAT}')", file=str(source))
    for name in ("device", "kind"):
        if not isinstance(doc.get(name), str) or not doc[name]:
            raise UserError("missing or empty", file=str(source), field=name)
    if doc["kind"] not in PROFILE_KINDS:
        raise UserError(f"unknown kind '{doc['kind']}'; expected one of {', '.join(PROFILE_KINDS)}",
                        file=str(source), field="kind")
    if device is not None and doc["device"] != device:
        raise UserError(f"this profile was fitted for {doc['device']}, not {device}; use a profile made "
                        f"on {device} (or drop --profile for the datasheet roofline)", file=str(source),
                        field="device")
    coefficients = _coefficients(doc.get("coefficients") or {}, source)
    for name in ("fit", "transfer"):
        if not isinstance(doc.get(name) or {}, dict):
            raise UserError("must be a mapping", file=str(source), field=name)
    kernels = _load_grids(doc, source) if doc.get("grids_file") else {}
    return Profile(device=doc["device"], kind=doc["kind"], engine=str(doc.get("engine") or ""),
                   engine_version=str(doc.get("engine_version") or ""), source=str(doc.get("source") or ""),
                   created=str(doc.get("created") or ""), coefficients=coefficients, kernels=kernels,
                   mla=_mla(doc.get("mla") or {}, source),
                   fit=dict(doc.get("fit") or {}), transfer=doc.get("transfer"),
                   notes=str(doc.get("notes") or ""))


def _coefficients(data: Any, source: Path) -> Coefficients:
    if not isinstance(data, dict):
        raise UserError("must be a mapping", file=str(source), field="coefficients")
    known = Coefficients().to_dict()
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UserError(f"unknown coefficient '{unknown[0]}'; expected {', '.join(known)}", file=str(source),
                        field="coefficients")
    values = {}
    for name, default in known.items():
        value = data.get(name, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or not -1e300 < value < 1e300:
            raise UserError("must be a finite number", file=str(source), field=f"coefficients.{name}")
        if name.endswith("_scale") and value <= 0:
            raise UserError("must be > 0", file=str(source), field=f"coefficients.{name}")
        if name.endswith("_s") and value < 0:
            raise UserError("must be >= 0 seconds", file=str(source), field=f"coefficients.{name}")
        values[name] = float(value)
    return Coefficients(**values)


def _mla(data: Any, source: Path) -> dict[str, MlaConstants]:
    """The `mla` section: per phase five finite numbers, efficiencies in (0, 1], fixed_s >= 0."""
    if not isinstance(data, dict):
        raise UserError("must be a mapping", file=str(source), field="mla")
    out = {}
    names = tuple(MlaConstants.__dataclass_fields__)
    for phase, values in data.items():
        where = f"mla.{phase}"
        if phase not in MLA_PHASES:
            raise UserError(f"unknown MLA phase '{phase}'; expected {', '.join(MLA_PHASES)}", file=str(source),
                            field=where)
        if not isinstance(values, dict) or set(values) != set(names):
            raise UserError(f"expected the fields {', '.join(names)}", file=str(source), field=where)
        for name, value in values.items():
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (value >= 0 if name == "fixed_s" else 0 < value <= 1)
            if not ok:
                expected = "a number of seconds >= 0" if name == "fixed_s" else "an efficiency in (0, 1]"
                raise UserError(f"expected {expected}, got {value!r}", file=str(source), field=f"{where}.{name}")
        out[phase] = MlaConstants(**{name: float(values[name]) for name in names})
    return out


def _load_grids(doc: dict[str, Any], source: Path) -> dict[str, KernelFit]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = doc["grids_file"]
    grids_path = source.parent / str(name)
    if "/" in str(name) or not grids_path.is_file():
        raise UserError(f"its grids file {name} is missing (copy it along with the profile)",
                        file=str(source), field="grids_file")
    data = grids_path.read_bytes()
    if doc.get("grids_sha256") and hashlib.sha256(data).hexdigest() != doc["grids_sha256"]:
        raise UserError(f"grids file {name} does not match the profile (re-run calibrate)", file=str(source),
                        field="grids_sha256")
    try:
        table = pq.read_table(io.BytesIO(data))
        log_eff = table.column("log_eff").to_numpy()
        measured = table.column("measured").to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, KeyError) as exc:
        raise UserError(f"grids file {name} is not readable ({exc.__class__.__name__})", file=str(source),
                        field="grids_file") from None
    kernels: dict[str, KernelFit] = {}
    try:
        for entry in doc.get("grids") or []:
            axes = tuple(entry["axes"])
            values = tuple(np.asarray(entry["axes"][a], dtype=np.float64) for a in axes)
            shape = tuple(len(v) for v in values)
            start, size = int(entry["offset"]), int(np.prod(shape))
            if start + size > len(log_eff):
                raise ValueError("offset beyond the grids file")
            grid = Grid(axes, values, log_eff[start:start + size].reshape(shape),
                        measured[start:start + size].reshape(shape), tuple(entry.get("align") or ()))
            group = entry.get("group") or {}
            fit = kernels.setdefault(entry["kernel"], KernelFit(entry["kernel"], tuple(group), {},
                                                                int(entry.get("points", 0))))
            fit.groups[tuple(str(v) for v in group.values())] = grid
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"malformed grid entry ({exc.__class__.__name__}: {exc})", file=str(source),
                        field="grids") from None
    return kernels
