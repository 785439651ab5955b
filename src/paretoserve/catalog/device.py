"""Accelerator catalog: `DeviceSpec`, the bundled hardware files, and user hardware files.

Conventions for every number (bundled files and user files alike; see hardware/SOURCES.md):

- FLOP/s are peak **dense** rates (no structured sparsity) per dtype: tensor-core rates for the
  low-precision dtypes (fp32 accumulation where the product offers a choice), the vector (CUDA-core)
  rate for fp32. Datasheet figures printed "with sparsity" are halved.
- Bandwidths are bytes/s, per device, in one direction (a "900 GB/s bidirectional" NVLink is 450e9).
- `mem_capacity` is the memory the runtime exposes (CUDA's total, which vLLM multiplies by
  `gpu_memory_utilization`), not the marketing figure; each file says how it was obtained.
- A "node" is the set of devices joined by the intra-node link (NVLink / Infinity Fabric / PCIe
  switch); for GB200 that is the 72-GPU NVLink domain.
- Seconds, bytes, watts and US dollars per device-hour throughout.

`load_device` accepts a catalog name (case-insensitive, `-`/space/`_` interchangeable, common aliases
such as "h100" or "4090"), "local_cpu" / "cpu" (measured by `cpu_probe`), or a path to a YAML file
with the `DeviceSpec` fields. A user file may start from a catalog entry with `base: <name>` and
override some fields; fields a user file gives without a source are attributed to the file.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import time
from pathlib import Path
from typing import Any, Literal

import pydantic

from paretoserve.catalog.dtypes import normalize_dtype
from paretoserve.errors import UserError
from paretoserve.textfiles import read_yaml

#: Dtypes a device may list peak FLOP/s for.
FLOP_DTYPES: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8", "fp4")

#: Fields that hold a number and therefore need an entry in `DeviceSpec.sources`.
NUMERIC_FIELDS: tuple[str, ...] = (
    "flops", "mem_bandwidth", "mem_capacity", "intra_node_bandwidth", "intra_node_latency",
    "inter_node_bandwidth", "inter_node_latency", "devices_per_node", "pcie_bandwidth", "power_idle",
    "power_max", "price_per_hour",
)

#: SI unit of each numeric field (of every value of `flops`), e.g. for machine-readable output.
UNITS: dict[str, str] = {
    "flops": "FLOP/s", "mem_bandwidth": "B/s", "mem_capacity": "B", "intra_node_bandwidth": "B/s",
    "intra_node_latency": "s", "inter_node_bandwidth": "B/s", "inter_node_latency": "s",
    "devices_per_node": "devices", "pcie_bandwidth": "B/s", "power_idle": "W", "power_max": "W",
    "price_per_hour": "USD/h",
}

# Which listed rate serves a requested dtype, in order of preference. fp16 and bf16 run at the same
# rate wherever both exist. A missing fp8/int8/fp4 unit (Ampere has no fp8, Hopper no fp4) means the
# engine dequantizes weights and runs the GEMM in the activation dtype, bf16; int4 is weight-only
# everywhere. Every device lists fp32, so every chain ends somewhere.
_RATE_CHAIN: dict[str, tuple[str, ...]] = {
    "fp32": ("fp32",),
    "tf32": ("tf32", "fp32"),
    "bf16": ("bf16", "fp16", "fp32"),
    "fp16": ("fp16", "bf16", "fp32"),
    "fp8": ("fp8", "bf16", "fp16", "fp32"),
    "int8": ("int8", "bf16", "fp16", "fp32"),
    "fp4": ("fp4", "bf16", "fp16", "fp32"),
    "int4": ("bf16", "fp16", "fp32"),
}

_HARDWARE_DIR = Path(__file__).with_name("hardware")
_LOCAL_CPU = "local_cpu"

# Extra names people type, in compact form (see `_compact`), mapped to catalog names.
_ALIASES: dict[str, str] = {
    "h100": "h100_sxm", "h10080gb": "h100_sxm", "h100sxm5": "h100_sxm", "h10080gbhbm3": "h100_sxm",
    "h100nvl94gb": "h100_nvl", "h100pcie80gb": "h100_pcie",
    "h200": "h200_sxm", "h200141gb": "h200_sxm",
    "a100": "a100_sxm", "a10080gb": "a100_sxm", "a100sxm80gb": "a100_sxm", "a100sxm480gb": "a100_sxm",
    "a10040gb": "a100_sxm_40gb", "a100sxm440gb": "a100_sxm_40gb",
    "a100pcie80gb": "a100_pcie", "a10080gbpcie": "a100_pcie",
    "a100pcie40gb": "a100_pcie_40gb", "a10040gbpcie": "a100_pcie_40gb",
    "b200sxm": "b200", "hgxb200": "b200", "dgxb200": "b200",
    "b300sxm": "b300", "hgxb300": "b300", "dgxb300": "b300",
    "gb200nvl72": "gb200", "gb300nvl72": "gb300",
    "4090": "rtx_4090", "5090": "rtx_5090",
    "rtxpro6000server": "rtx_pro_6000", "rtxpro6000blackwell": "rtx_pro_6000",
    "rtxpro6000blackwellserveredition": "rtx_pro_6000", "rtxpro6000serveredition": "rtx_pro_6000",
    "jetsonagxorin": "jetson_agx_orin_64gb", "agxorin": "jetson_agx_orin_64gb",
    "orin": "jetson_agx_orin_64gb", "jetson": "jetson_agx_orin_64gb",
    "m4max": "apple_m4_max",
    "pi4": "raspberry_pi_4", "rpi4": "raspberry_pi_4", "pi5": "raspberry_pi_5", "rpi5": "raspberry_pi_5",
    "orinnano": "jetson_orin_nano_8gb", "jetsonorinnano": "jetson_orin_nano_8gb",
    "orinnx": "jetson_orin_nx_16gb", "jetsonorinnx": "jetson_orin_nx_16gb", "jetsonagx": "jetson_agx_orin_64gb",
    "cpu": _LOCAL_CPU, "local": _LOCAL_CPU,
}
_VENDOR_PREFIXES = ("nvidia", "amd", "instinct", "geforce", "apple")


class DeviceSpec(pydantic.BaseModel, frozen=True, extra="forbid"):
    """Datasheet facts about one accelerator (or CPU / SoC), each with its source.

    Attributes:
        name: catalog key, lower snake case ("h100_sxm").
        display_name: marketing name ("NVIDIA H100 SXM5 80GB").
        vendor: "nvidia", "amd", "apple", "intel", ...
        kind: "gpu", "cpu" or "soc" (CPU and GPU sharing one memory).
        flops: peak dense FLOP/s per dtype (keys from `FLOP_DTYPES`; only what the hardware has).
        mem_bandwidth: device-memory bandwidth in bytes/s.
        mem_capacity: device memory the runtime exposes (CUDA's total), in bytes.
        intra_node_bandwidth: bytes/s per device, one direction, to a peer in the same node.
        intra_node_latency: seconds of fixed cost per intra-node transfer or collective step.
        inter_node_bandwidth: bytes/s per device, one direction, across nodes (its share of the NICs).
        inter_node_latency: seconds of fixed cost per inter-node transfer or collective step.
        devices_per_node: devices sharing the intra-node link.
        intra_node_link: what joins the devices of a node: "nvlink" (NVLink / NVSwitch, every pair
            connected), "xgmi" (AMD Infinity Fabric, fully connected), "pcie" (PCIe switch or root
            complex), or "none" (one device per node). Default "pcie".
        peer_to_peer: whether devices of a node can read each other's memory directly (CUDA P2P);
            GeForce drivers disable it over PCIe, so traffic stages through host memory. Default true.
        nvlink_multicast: whether the NVLink fabric has multicast / in-switch reduction (NVLink
            SHARP, "NVLS": NVSwitch systems from Hopper on). Default false.
        compute_capability: CUDA compute capability ("9.0"), which selects vLLM's all-reduce size
            caps; "" for non-NVIDIA devices.
        pcie_bandwidth: host <-> device bytes/s, one direction (KV swap to CPU memory).
        power_idle: watts drawn with nothing running.
        power_max: watts at full load (TDP / maximum board power).
        price_per_hour: USD per device-hour, on-demand list price (0 for the local machine).
        price_date: month the price was listed, "YYYY-MM".
        price_source: where the price comes from.
        sources: field name -> source (document, URL, measurement, or "estimate: ...") for every
            numeric field.
        notes: caveats.
    """

    name: str = pydantic.Field(pattern=r"^[a-z0-9]+(_[a-z0-9]+)*$")
    display_name: str = pydantic.Field(min_length=1)
    vendor: str = pydantic.Field(min_length=1)
    kind: Literal["gpu", "cpu", "soc"]
    flops: dict[str, float]
    mem_bandwidth: float = pydantic.Field(gt=0, allow_inf_nan=False)
    mem_capacity: float = pydantic.Field(gt=0, allow_inf_nan=False)
    intra_node_bandwidth: float = pydantic.Field(gt=0, allow_inf_nan=False)
    intra_node_latency: float = pydantic.Field(gt=0, allow_inf_nan=False)
    inter_node_bandwidth: float = pydantic.Field(gt=0, allow_inf_nan=False)
    inter_node_latency: float = pydantic.Field(gt=0, allow_inf_nan=False)
    devices_per_node: int = pydantic.Field(ge=1)
    intra_node_link: Literal["nvlink", "xgmi", "pcie", "none"] = "pcie"
    peer_to_peer: bool = True
    nvlink_multicast: bool = False
    compute_capability: str = pydantic.Field(default="", pattern=r"^(\d+\.\d+)?$")
    pcie_bandwidth: float = pydantic.Field(gt=0, allow_inf_nan=False)
    power_idle: float = pydantic.Field(gt=0, allow_inf_nan=False)
    power_max: float = pydantic.Field(gt=0, allow_inf_nan=False)
    price_per_hour: float = pydantic.Field(ge=0, allow_inf_nan=False)
    price_date: str = pydantic.Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")
    price_source: str = pydantic.Field(min_length=1)
    sources: dict[str, str]
    notes: str = ""

    @pydantic.model_validator(mode="before")
    @classmethod
    def _price_source_is_the_price_source(cls, data: Any) -> Any:
        """`price_source` doubles as `sources["price_per_hour"]` unless that is given explicitly."""
        if isinstance(data, dict) and isinstance(data.get("sources"), dict) and "price_source" in data:
            data = {**data, "sources": {"price_per_hour": data["price_source"], **data["sources"]}}
        return data

    @pydantic.field_validator("flops")
    @classmethod
    def _check_flops(cls, flops: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(flops) - set(FLOP_DTYPES))
        if unknown:
            raise ValueError(f"unknown dtype(s) {', '.join(unknown)}; "
                             f"expected keys from {', '.join(FLOP_DTYPES)}")
        if "fp32" not in flops:
            raise ValueError("needs an 'fp32' entry (the vector rate every device has)")
        bad = [k for k, v in flops.items() if not (math.isfinite(v) and v > 0)]
        if bad:
            raise ValueError(f"FLOP/s must be positive and finite (bad: {', '.join(bad)})")
        return flops

    @pydantic.model_validator(mode="after")
    def _check_consistency(self) -> DeviceSpec:
        missing = [f for f in NUMERIC_FIELDS if not self.sources.get(f, "").strip()]
        if missing:
            raise ValueError(f"sources needs an entry for {', '.join(missing)}")
        unknown = sorted(set(self.sources) - set(NUMERIC_FIELDS))
        if unknown:
            raise ValueError(f"sources has unknown field(s) {', '.join(unknown)}; "
                             f"expected keys from {', '.join(NUMERIC_FIELDS)}")
        if self.nvlink_multicast and self.intra_node_link != "nvlink":
            raise ValueError(f"nvlink_multicast needs intra_node_link: nvlink (got {self.intra_node_link})")
        if self.power_idle >= self.power_max:
            raise ValueError(f"power_idle ({self.power_idle:g} W) must be below "
                             f"power_max ({self.power_max:g} W)")
        return self

    def __hash__(self) -> int:
        """Hash by content, so a spec can key caches (the dict fields make the default unhashable)."""
        return hash((self.name, tuple(sorted(self.flops.items())), self.mem_bandwidth, self.mem_capacity,
                     self.intra_node_bandwidth, self.inter_node_bandwidth, self.price_per_hour))

    def peak_flops(self, dtype: str) -> float:
        """Peak dense FLOP/s (or OP/s) of a GEMM computed in `dtype`.

        Accepts the names of `paretoserve.catalog.dtypes` ("bf16", "bfloat16", "fp8", "int4", ...).
        fp16 and bf16 stand in for each other; a dtype without hardware support (fp8 on Ampere, fp4
        before Blackwell) and weight-only int4 fall back to the bf16 rate; tf32 falls back to fp32.
        Raises `UserError` for an unknown dtype name.
        """
        chain = _RATE_CHAIN[normalize_dtype(dtype)]
        return next(self.flops[candidate] for candidate in chain if candidate in self.flops)

    def with_price(self, usd_per_hour: float) -> DeviceSpec:
        """A copy priced at `usd_per_hour` (USD per device-hour), marked as a user override."""
        if not (isinstance(usd_per_hour, int | float) and math.isfinite(usd_per_hour) and usd_per_hour >= 0):
            raise UserError(f"price for '{self.name}' must be a finite number of USD per hour >= 0, "
                            f"got {usd_per_hour!r}")
        source = "user override"
        return self.model_copy(update={
            "price_per_hour": float(usd_per_hour), "price_source": source,
            "price_date": time.strftime("%Y-%m"), "sources": {**self.sources, "price_per_hour": source},
        })


def list_devices() -> list[DeviceSpec]:
    """Every bundled device plus the probed local CPU, sorted by name."""
    from paretoserve.catalog.cpu_probe import probe_local_cpu

    devices = [*_bundled().values(), probe_local_cpu()]
    return sorted(devices, key=lambda d: d.name)


def load_device(name_or_path: str) -> DeviceSpec:
    """The device named `name_or_path` (catalog name, alias, "local_cpu") or read from a YAML file.

    A string ending in .yaml/.yml or containing a path separator is read as a file. Raises
    `UserError` for an unknown name (with close matches), a missing file, or a malformed file.
    """
    text = str(name_or_path).strip()
    if text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text:
        return _load_user_file(Path(text).expanduser())
    name = _resolve_name(text)
    if name == _LOCAL_CPU:
        from paretoserve.catalog.cpu_probe import probe_local_cpu

        return probe_local_cpu()
    return _bundled()[name]


def _compact(name: str) -> str:
    """Lower-case, separators removed, vendor prefix dropped: "NVIDIA H100-SXM" -> "h100sxm"."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    for prefix in _VENDOR_PREFIXES:
        if key.startswith(prefix) and len(key) > len(prefix):
            key = key[len(prefix):]
    return key


@functools.cache
def _name_index() -> dict[str, str]:
    """Compact spelling (of catalog names and aliases) -> catalog name."""
    index = {_compact(name): name for name in (*_bundled(), _LOCAL_CPU)}
    return {**_ALIASES, **index}


def _resolve_name(text: str) -> str:
    name = _name_index().get(_compact(text))
    if name is not None:
        return name
    known = sorted((*_bundled(), _LOCAL_CPU))
    close = difflib.get_close_matches(_compact(text), list(_name_index()), n=6, cutoff=0.5)
    suggestions = list(dict.fromkeys(_name_index()[c] for c in close))[:3]
    hint = f"did you mean {', '.join(suggestions)}? " if suggestions else ""
    raise UserError(f"unknown hardware '{text}'; {hint}known: {', '.join(known)} "
                    f"(or a path to a .yaml file with DeviceSpec fields)")


@functools.cache
def _bundled() -> dict[str, DeviceSpec]:
    """The catalog files shipped in catalog/hardware/, by name."""
    specs = (_parse_file(path, _read_yaml(path)) for path in sorted(_HARDWARE_DIR.glob("*.yaml")))
    return {spec.name: spec for spec in specs}


def _read_yaml(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file; UserError naming the file (and line) otherwise."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise UserError("expected a mapping of DeviceSpec fields (name, display_name, flops, ...)",
                        file=str(path))
    return data


def _load_user_file(path: Path) -> DeviceSpec:
    """A user hardware file: full DeviceSpec fields, or `base: <catalog name>` plus overrides."""
    if not path.is_file():
        raise UserError("hardware file not found; give a catalog name or an existing .yaml file",
                        file=str(path))
    data = _read_yaml(path)
    own = f"user file {path}"
    given_sources = data.pop("sources", {})
    if not isinstance(given_sources, dict):
        raise UserError("must map field names to sources", file=str(path), field="sources")
    sources = {f: own for f in NUMERIC_FIELDS if f in data}
    base_name = data.pop("base", None)
    if base_name is not None:
        if not isinstance(base_name, str):
            raise UserError("must be a catalog device name", file=str(path), field="base")
        base = load_device(_resolve_name(base_name)).model_dump()
        sources = {**base.pop("sources"), **sources}
        if "price_per_hour" in data:
            base.update(price_source=own, price_date=time.strftime("%Y-%m"))
        data = {**base, **data}
    if "price_per_hour" in data:
        data.setdefault("price_source", own)
        data.setdefault("price_date", time.strftime("%Y-%m"))
    sources.pop("price_per_hour", None)  # follows price_source (see DeviceSpec)
    data["sources"] = {**sources, **given_sources}
    return _parse_file(path, data)


def _parse_file(path: Path, data: dict[str, Any]) -> DeviceSpec:
    """Validate `data` as a DeviceSpec; a ValidationError becomes one UserError line naming the field."""
    try:
        return DeviceSpec.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        message = first["msg"].removeprefix("Value error, ")
        raise UserError(f"{message}{more}", file=str(path), field=field) from None
