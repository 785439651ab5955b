"""The local CPU as a `DeviceSpec`, from a short measurement (well under 2 s) cached on disk.

Measured: fp32 GEMM FLOP/s (NumPy matmul of 1024 × 1024 matrices through its BLAS, best of three)
and copy bandwidth (`np.copyto` of a 128 MiB buffer split over one thread per core, best of five,
counting the bytes read plus the bytes written, as the roofline counts bytes moved). Read from the
system: usable cores (CPU affinity) and memory (/proc/meminfo, capped by a cgroup limit). Power is an
estimate per core, and the price is 0 (the machine is already paid for; `DeviceSpec.with_price` sets
one). The result is cached as JSON in `$PARETOSERVE_CACHE_DIR/cpu_probe.json` (default
`~/.cache/paretoserve/`) and reused while the CPU model, core count, memory and NumPy version match.
"""

from __future__ import annotations

import json
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from paretoserve.atomic import write_text_atomic
from paretoserve.catalog.device import DeviceSpec

_CACHE_VERSION = 1
_GEMM_N = 1024
_GEMM_N_SLOW = 512  # used instead when one 1024 matmul takes longer than _SLOW_GEMM_S
_SLOW_GEMM_S = 0.1
_GEMM_REPEATS = 3
_COPY_BYTES = 128 * 2**20
_COPY_REPEATS = 5
# Estimates, not measurements: a server core at full vector load draws ~10 W including its share of
# the uncore and memory controller; an idle core ~3 W of package power.
_WATTS_PER_CORE_MAX = 10.0
_WATTS_PER_CORE_IDLE = 3.0
# The network a lone machine is assumed to have: 10 Gigabit Ethernet, TCP round trip ~50 µs.
_ETHERNET_BYTES_PER_S = 10e9 / 8
_ETHERNET_LATENCY_S = 50e-6


def cache_path() -> Path:
    """Where the probe result is cached: `$PARETOSERVE_CACHE_DIR` or ~/.cache/paretoserve."""
    root = os.environ.get("PARETOSERVE_CACHE_DIR") or Path.home() / ".cache" / "paretoserve"
    return Path(root) / "cpu_probe.json"


def probe_local_cpu(cache: bool = True) -> DeviceSpec:
    """The local CPU as a DeviceSpec named "local_cpu".

    With `cache` (the default) a cached result for this machine is returned when there is one, and
    a fresh measurement is stored; `cache=False` measures afresh and leaves the cache alone.
    """
    key = _machine_key()
    path = cache_path()
    if cache:
        cached = _read_cache(path, key)
        if cached is not None:
            return cached
    spec = _measure(key)
    if cache:
        payload = {"version": _CACHE_VERSION, "key": key, "spec": spec.model_dump()}
        try:
            write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
        except OSError:
            pass  # an unwritable cache only costs a re-probe next time
    return spec


def _read_cache(path: Path, key: dict[str, Any]) -> DeviceSpec | None:
    """The cached spec if the file is ours, intact, and for this machine; None otherwise."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload["version"] != _CACHE_VERSION or payload["key"] != key:
            return None
        return DeviceSpec.model_validate(payload["spec"])
    except (OSError, ValueError, KeyError, TypeError):  # missing, corrupt, or an older layout
        return None


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _memory_bytes() -> int:
    """Physical memory this process may use, in bytes (cgroup limit if lower than the machine's)."""
    total = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if not total:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = int(Path(limit_file).read_text().strip())
        except (OSError, ValueError):  # absent, or "max"
            continue
        total = min(total, limit)
    return total


def _cpu_identity() -> tuple[str, str]:
    """(model name, vendor) of the CPU."""
    model, vendor_id = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            field, _, value = line.partition(":")
            field = field.strip()
            if field == "model name" and not model:
                model = value.strip()
            elif field == "vendor_id" and not vendor_id:
                vendor_id = value.strip()
    except OSError:
        pass
    vendors = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}
    machine = platform.machine().lower()
    is_arm = machine.startswith(("arm", "aarch64"))
    vendor = vendors.get(vendor_id) or ("arm" if is_arm else machine or "unknown")
    return model or platform.processor() or machine or "unknown CPU", vendor


def _machine_key() -> dict[str, Any]:
    model, _ = _cpu_identity()
    return {"cpu": model, "cores": _usable_cores(), "memory": _memory_bytes(), "numpy": np.__version__}


def _gemm_flops() -> tuple[float, int]:
    """Best fp32 matmul rate in FLOP/s, and the matrix size used."""
    rng = np.random.default_rng(0)
    n = _GEMM_N
    a = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty_like(a)
    start = time.perf_counter()
    np.matmul(a, a, out=out)  # warm-up: BLAS threads, page faults
    if time.perf_counter() - start > _SLOW_GEMM_S:
        n = _GEMM_N_SLOW
        a, out = a[:n, :n].copy(), out[:n, :n].copy()
    best = float("inf")
    for _ in range(_GEMM_REPEATS):
        start = time.perf_counter()
        np.matmul(a, a, out=out)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best, n


def _copy_bandwidth(threads: int) -> tuple[float, int]:
    """Best copy rate in bytes/s (read + written), one chunk per thread, and the buffer size."""
    size = min(_COPY_BYTES, _memory_bytes() // 16)
    src = np.ones(size, dtype=np.uint8)
    dst = np.empty_like(src)
    bounds = np.linspace(0, size, threads + 1, dtype=np.int64)
    chunks = [(dst[lo:hi], src[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    best = float("inf")
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for attempt in range(_COPY_REPEATS + 1):  # the first pass faults in dst's pages
            start = time.perf_counter()
            list(pool.map(lambda pair: np.copyto(*pair), chunks))
            if attempt:
                best = min(best, time.perf_counter() - start)
    return 2.0 * size / best, size


def _measure(key: dict[str, Any]) -> DeviceSpec:
    """Run the probe and describe the machine."""
    model, vendor = _cpu_identity()
    cores = key["cores"]
    gemm, n = _gemm_flops()
    copy, copy_size = _copy_bandwidth(cores)
    month = time.strftime("%Y-%m")
    measured = f"measured {time.strftime('%Y-%m-%d')} by paretoserve.catalog.cpu_probe"
    link = "estimate: a lone machine is assumed to have 10 Gigabit Ethernet"
    return DeviceSpec(
        name="local_cpu",
        display_name=f"{model} ({cores} cores)",
        vendor=vendor,
        kind="cpu",
        flops={"fp32": gemm},
        mem_bandwidth=copy,
        mem_capacity=float(key["memory"]),
        intra_node_bandwidth=_ETHERNET_BYTES_PER_S,
        intra_node_latency=_ETHERNET_LATENCY_S,
        inter_node_bandwidth=_ETHERNET_BYTES_PER_S,
        inter_node_latency=_ETHERNET_LATENCY_S,
        devices_per_node=1,
        intra_node_link="none",
        peer_to_peer=False,
        pcie_bandwidth=copy / 2,
        power_idle=_WATTS_PER_CORE_IDLE * cores,
        power_max=_WATTS_PER_CORE_MAX * cores,
        price_per_hour=0.0,
        price_date=month,
        price_source="local machine: no rental price (0); set one with DeviceSpec.with_price",
        sources={
            "flops": f"{measured}: NumPy {np.__version__} fp32 matmul {n}x{n}x{n}, best of {_GEMM_REPEATS}",
            "mem_bandwidth": f"{measured}: np.copyto of {copy_size >> 20} MiB on {cores} thread(s), "
                             f"best of {_COPY_REPEATS}, bytes read + written",
            "mem_capacity": "MemTotal in /proc/meminfo (or sysconf), capped by the cgroup memory limit",
            "intra_node_bandwidth": f"{link} (one device per node: not used within a node)",
            "intra_node_latency": f"{link} (one device per node: not used within a node)",
            "inter_node_bandwidth": f"{link}: 10e9 bit/s = 1.25e9 B/s",
            "inter_node_latency": f"{link}: ~50 µs TCP round trip",
            "devices_per_node": "the local machine is one device",
            "pcie_bandwidth": "host and device memory are the same DRAM: a swap is a copy, so half the "
                              "measured copy bandwidth (which counts each byte read and written)",
            "power_idle": f"estimate: {_WATTS_PER_CORE_IDLE:g} W per usable core (share of package power)",
            "power_max": f"estimate: {_WATTS_PER_CORE_MAX:g} W per usable core at full vector load",
        },
        notes="Measured, not a datasheet: the GEMM rate is what NumPy's BLAS reaches, a lower bound on the "
              "peak; lower-precision dtypes fall back to this fp32 rate.",
    )
