"""Hardware catalog: datasheet values written here (not read back from the catalog), relations that
must hold between dtypes, name resolution, user files, errors, and the local CPU probe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from paretoserve.catalog import cpu_probe
from paretoserve.catalog.device import FLOP_DTYPES, NUMERIC_FIELDS, DeviceSpec, list_devices, load_device
from paretoserve.errors import UserError
from prereq import missing

GiB = 2**30
HARDWARE_DIR = Path(__file__).resolve().parents[1] / "src" / "paretoserve" / "catalog" / "hardware"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

REQUIRED = [
    "a100_sxm_40gb", "a100_sxm", "a100_pcie", "a100_pcie_40gb", "h100_sxm", "h100_pcie", "h100_nvl",
    "h200_sxm", "b200", "b300", "gb200", "gb300", "l4", "l40s", "a10g", "a30", "rtx_4090", "rtx_5090",
    "rtx_pro_6000", "mi300x", "mi325x", "jetson_agx_orin_64gb", "apple_m4_max", "local_cpu",
]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Keep the CPU probe's cache out of the user's home."""
    monkeypatch.setenv("PARETOSERVE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> dict[str, DeviceSpec]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PARETOSERVE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return {d.name: d for d in list_devices()}


def test_catalog_lists_required_devices_sorted(catalog):
    assert set(REQUIRED) <= set(catalog)
    assert len(catalog) >= 24
    names = [d.name for d in list_devices()]
    assert names == sorted(names)


def test_every_number_is_positive_and_sourced(catalog):
    for device in catalog.values():
        for field in NUMERIC_FIELDS:
            value = getattr(device, field)
            values = value.values() if isinstance(value, dict) else [value]
            for v in values:
                assert math.isfinite(v), (device.name, field)
                free = field == "price_per_hour" and device.name == "local_cpu"
                assert v > 0 or free, (device.name, field)
            assert device.sources[field].strip(), (device.name, field)
        assert set(device.flops) <= set(FLOP_DTYPES)
        assert device.power_idle < device.power_max


# (device, quantity, datasheet value, relative tolerance). Dense FLOP/s; bandwidths in B/s.
DATASHEET = [
    ("h100_sxm", "bf16", 989.4e12, 0.01),  # H100 whitepaper, SXM5 dense BF16
    ("h100_sxm", "fp8", 1978.9e12, 0.01),
    ("h100_sxm", "fp32", 67e12, 0.01),
    ("h100_sxm", "mem_bandwidth", 3.35e12, 0.001),
    ("h100_sxm", "power_max", 700, 0.0),
    ("h100_pcie", "bf16", 1513e12 / 2, 0.01),  # datasheet prints 1,513 with sparsity
    ("h100_pcie", "mem_bandwidth", 2.0e12, 0.001),
    ("h100_nvl", "bf16", 1671e12 / 2, 0.01),
    ("h100_nvl", "mem_bandwidth", 3.9e12, 0.001),
    ("h200_sxm", "bf16", 989.4e12, 0.01),
    ("h200_sxm", "mem_bandwidth", 4.8e12, 0.001),
    ("a100_sxm", "bf16", 312e12, 0.001),
    ("a100_sxm", "tf32", 156e12, 0.001),
    ("a100_sxm", "int8", 624e12, 0.001),
    ("a100_sxm", "fp32", 19.5e12, 0.001),
    ("a100_sxm", "mem_bandwidth", 2.039e12, 0.001),
    ("a100_sxm", "power_max", 400, 0.0),
    ("a100_sxm_40gb", "mem_bandwidth", 1.555e12, 0.001),
    ("a100_pcie", "mem_bandwidth", 1.935e12, 0.001),
    ("a100_pcie", "power_max", 300, 0.0),
    ("a30", "bf16", 165e12, 0.001),
    ("a30", "mem_bandwidth", 933e9, 0.001),
    ("b200", "bf16", 2.25e15, 0.001),
    ("b200", "fp4", 9e15, 0.001),
    ("gb200", "bf16", 2.5e15, 0.001),
    ("gb200", "mem_bandwidth", 8e12, 0.001),
    ("l4", "bf16", 121e12, 0.01),
    ("l4", "mem_bandwidth", 300e9, 0.001),
    ("l4", "power_max", 72, 0.0),
    ("l40s", "bf16", 362e12, 0.01),
    ("l40s", "mem_bandwidth", 864e9, 0.001),
    ("rtx_4090", "bf16", 165.2e12, 0.01),  # Ada whitepaper, FP16 tensor with FP32 accumulate, dense
    ("rtx_4090", "fp32", 82.6e12, 0.01),
    ("rtx_4090", "mem_bandwidth", 1008e9, 0.001),
    ("rtx_4090", "power_max", 450, 0.0),
    ("rtx_5090", "mem_bandwidth", 1792e9, 0.001),
    ("mi300x", "bf16", 1307.4e12, 0.01),
    ("mi300x", "fp8", 2614.9e12, 0.01),
    ("mi300x", "mem_bandwidth", 5.3e12, 0.001),
    ("mi300x", "power_max", 750, 0.0),
    ("mi325x", "mem_bandwidth", 6.0e12, 0.001),
    ("jetson_agx_orin_64gb", "mem_bandwidth", 204.8e9, 0.001),
    ("apple_m4_max", "mem_bandwidth", 546e9, 0.001),
]


@pytest.mark.parametrize(("name", "quantity", "expected", "rel"), DATASHEET)
def test_datasheet_values(name, quantity, expected, rel):
    device = load_device(name)
    value = device.peak_flops(quantity) if quantity in FLOP_DTYPES else getattr(device, quantity)
    assert value == pytest.approx(expected, rel=rel)


# Marketed memory in GB, which for HBM and GDDR means GiB-sized chips; what CUDA exposes is the
# nominal size less ECC/driver reserves (an "80 GB" H100 shows ~79.2 GiB to PyTorch, a "24 GB" L4
# ~22 GiB), so it must lie between 90% and 100% of the nominal GiB.
MARKETED_GB = {
    "a100_sxm_40gb": 40, "a100_sxm": 80, "a100_pcie": 80, "a100_pcie_40gb": 40, "h100_sxm": 80,
    "h100_pcie": 80, "h100_nvl": 94, "h200_sxm": 141, "b200": 180, "b300": 288, "gb200": 186, "gb300": 288,
    "l4": 24, "l40s": 48, "a10g": 24, "a30": 24, "rtx_4090": 24, "rtx_5090": 32, "rtx_pro_6000": 96,
    "mi300x": 192, "mi325x": 256, "jetson_agx_orin_64gb": 64, "apple_m4_max": 128,
}


@pytest.mark.parametrize(("name", "gb"), sorted(MARKETED_GB.items()))
def test_memory_capacity_is_the_exposed_part_of_the_marketed_size(name, gb):
    capacity = load_device(name).mem_capacity
    assert 0.90 * gb * GiB <= capacity <= gb * GiB


def test_memory_capacity_spot_checks():
    assert load_device("h200_sxm").mem_capacity == pytest.approx(141 * GiB, rel=0.01)
    assert load_device("mi300x").mem_capacity == pytest.approx(192 * GiB, rel=0.01)
    assert load_device("l4").mem_capacity == pytest.approx(24e9, rel=0.02)
    assert load_device("h100_sxm").mem_capacity == pytest.approx(80 * GiB, rel=0.02)


def test_rtx_4090_capacity_is_what_the_real_vllm_run_saw():
    meta = SHARED_DATA / "serving_runs" / "rtx4090_llama3.1-8b_vllm0.19" / "meta.json"
    if not meta.is_file():
        missing("../shared/data not present")
    seen = json.loads(meta.read_text())["hardware"]["device_total_memory_bytes"]
    assert load_device("rtx_4090").mem_capacity == seen


@pytest.mark.parametrize("name", ["h100_sxm", "h100_pcie", "h100_nvl", "h200_sxm"])
def test_hopper_fp8_is_twice_bf16(name):
    device = load_device(name)
    assert device.peak_flops("fp8") == pytest.approx(2 * device.peak_flops("bf16"), rel=0.001)
    assert device.peak_flops("tf32") == pytest.approx(device.peak_flops("bf16") / 2, rel=0.001)


@pytest.mark.parametrize("name", ["a100_sxm", "a100_sxm_40gb", "a100_pcie", "a100_pcie_40gb", "a30", "a10g"])
def test_ampere_has_no_fp8_and_falls_back_to_bf16(name):
    device = load_device(name)
    assert "fp8" not in device.flops and "fp4" not in device.flops
    assert device.peak_flops("fp8") == device.peak_flops("bf16")
    assert device.peak_flops("fp4") == device.peak_flops("bf16")


@pytest.mark.parametrize("name", ["b200", "gb200", "rtx_pro_6000"])
def test_blackwell_fp4_is_twice_fp8(name):
    device = load_device(name)
    assert device.peak_flops("fp4") == pytest.approx(2 * device.peak_flops("fp8"), rel=0.001)


def test_dtype_fallbacks_and_aliases():
    h100 = load_device("h100_sxm")
    assert h100.peak_flops("bfloat16") == h100.peak_flops("fp16") == h100.flops["bf16"]
    assert h100.peak_flops("int4") == h100.flops["bf16"]  # weight-only: GEMMs run in bf16
    assert h100.peak_flops("fp4") == h100.flops["bf16"]  # no FP4 units on Hopper
    assert h100.peak_flops("float32") == h100.flops["fp32"]
    assert load_device("b200").peak_flops("mxfp4") == 9e15
    m4 = load_device("apple_m4_max")
    assert m4.peak_flops("int8") == m4.peak_flops("bf16")  # no int8 units listed
    assert m4.peak_flops("tf32") == m4.flops["fp32"]
    with pytest.raises(UserError, match="unknown dtype 'fp12'"):
        h100.peak_flops("fp12")


def test_every_gpu_has_equal_fp16_and_bf16(catalog):
    for device in catalog.values():
        if "fp16" in device.flops and "bf16" in device.flops:
            assert device.flops["fp16"] == device.flops["bf16"], device.name


def test_link_and_node_facts():
    h100 = load_device("h100_sxm")
    assert h100.intra_node_bandwidth == 450e9  # NVLink 4: 900 GB/s both directions
    assert h100.devices_per_node == 8
    assert load_device("a100_sxm").intra_node_bandwidth == 300e9  # NVLink 3: 600 GB/s both directions
    assert load_device("b200").intra_node_bandwidth == 900e9  # NVLink 5: 1.8 TB/s both directions
    assert load_device("gb200").devices_per_node == 72
    assert load_device("l4").intra_node_bandwidth == 32e9  # PCIe Gen4 x16, no NVLink
    for name in ("h100_sxm", "a100_sxm", "b200", "mi300x"):
        device = load_device(name)
        assert device.inter_node_bandwidth < device.intra_node_bandwidth
        assert device.inter_node_latency >= device.intra_node_latency


@pytest.mark.parametrize(("typed", "name"), [
    ("h100", "h100_sxm"), ("H100-SXM", "h100_sxm"), ("NVIDIA H100 80GB HBM3", "h100_sxm"),
    ("a100", "a100_sxm"), ("A100-40GB", "a100_sxm_40gb"), ("a100_pcie", "a100_pcie"),
    ("4090", "rtx_4090"), ("RTX 4090", "rtx_4090"), ("rtx_4090", "rtx_4090"), ("5090", "rtx_5090"),
    ("h200", "h200_sxm"), ("B200_SXM", "b200"), ("gb200-nvl72", "gb200"), ("MI300X", "mi300x"),
    ("AMD Instinct MI325X", "mi325x"), ("orin", "jetson_agx_orin_64gb"), ("m4-max", "apple_m4_max"),
    ("rtx-pro-6000-server", "rtx_pro_6000"), ("L40S", "l40s"),
])
def test_aliases(typed, name):
    assert load_device(typed).name == name


def test_local_cpu_names():
    assert load_device("local_cpu").name == "local_cpu"
    assert load_device("CPU").name == "local_cpu"


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UserError) as info:
        load_device("h900")
    message = str(info.value)
    assert "unknown hardware 'h900'" in message
    assert "did you mean" in message and "h100_sxm" in message
    assert "known: a100_pcie" in message and "\n" not in message


def test_bundled_files_are_named_after_their_device_and_listed_in_sources_md():
    sources_md = (HARDWARE_DIR / "SOURCES.md").read_text(encoding="utf-8")
    files = sorted(HARDWARE_DIR.glob("*.yaml"))
    assert len(files) >= 23
    for path in files:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert data["name"] == path.stem
        assert f"### {path.stem} — " in sources_md


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_full_user_file_loads_and_is_attributed(tmp_path):
    data = load_device("l4").model_dump()
    data.update(name="my_l4", price_per_hour=0.5)
    del data["sources"], data["price_source"]
    path = _write(tmp_path / "my.yaml", data)
    device = load_device(str(path))
    assert device.name == "my_l4" and device.price_per_hour == 0.5
    assert device.mem_bandwidth == 300e9
    assert all(str(path) in device.sources[f] for f in NUMERIC_FIELDS)


def test_user_file_with_base_overrides_some_fields(tmp_path):
    path = _write(tmp_path / "cheap_h100.yml", {
        "base": "h100", "name": "cheap_h100", "price_per_hour": 1.25, "devices_per_node": 4,
        "sources": {"devices_per_node": "our rack"},
    })
    device = load_device(str(path))
    base = load_device("h100_sxm")
    assert device.peak_flops("bf16") == base.peak_flops("bf16")
    assert device.sources["flops"] == base.sources["flops"]
    assert device.devices_per_node == 4 and device.sources["devices_per_node"] == "our rack"
    assert device.price_per_hour == 1.25 and str(path) in device.price_source
    assert device.sources["price_per_hour"] == device.price_source


def test_malformed_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nflops: {bf16: [1, 2\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"broken\.yaml:\d+: not valid YAML"):
        load_device(str(path))


def test_missing_or_bad_field_names_the_file_and_field(tmp_path):
    data = load_device("l4").model_dump()
    del data["mem_bandwidth"]
    path = _write(tmp_path / "partial.yaml", data)
    with pytest.raises(UserError, match=r"partial\.yaml field 'mem_bandwidth': Field required"):
        load_device(str(path))
    data = load_device("l4").model_dump()
    data["flops"]["fp6"] = 1e12
    path = _write(tmp_path / "badflops.yaml", data)
    with pytest.raises(UserError, match=r"badflops\.yaml field 'flops': unknown dtype\(s\) fp6"):
        load_device(str(path))
    path = _write(tmp_path / "neg.yaml", {**load_device("l4").model_dump(), "power_max": -5})
    with pytest.raises(UserError, match=r"neg\.yaml field 'power_max'"):
        load_device(str(path))


def test_other_bad_files(tmp_path):
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"list\.yaml: expected a mapping"):
        load_device(str(listing))
    with pytest.raises(UserError, match=r"nope\.yaml: hardware file not found"):
        load_device(str(tmp_path / "nope.yaml"))
    with pytest.raises(UserError, match="unknown hardware 'h999'"):
        load_device(str(_write(tmp_path / "b.yaml", {"base": "h999"})))


def test_sources_must_cover_every_number():
    data = load_device("l4").model_dump()
    del data["sources"]["mem_capacity"]
    with pytest.raises(ValueError, match="sources needs an entry for mem_capacity"):
        DeviceSpec.model_validate(data)


def test_with_price_overrides_and_keeps_the_rest():
    h100 = load_device("h100_sxm")
    cheap = h100.with_price(1.5)
    assert cheap.price_per_hour == 1.5 and cheap.price_source == "user override"
    assert cheap.sources["price_per_hour"] == "user override"
    assert cheap.flops == h100.flops and h100.price_per_hour != 1.5
    with pytest.raises(UserError, match="USD per hour"):
        h100.with_price(-1)


def test_specs_are_hashable_and_frozen():
    h100 = load_device("h100_sxm")
    assert {h100: 1}[load_device("H100")] == 1
    with pytest.raises(ValueError):
        h100.mem_bandwidth = 1.0


def test_local_cpu_probe_measures_and_caches(tmp_path, monkeypatch):
    spec = cpu_probe.probe_local_cpu()
    assert spec.name == "local_cpu" and spec.kind == "cpu"
    assert spec.flops["fp32"] > 1e8  # any CPU of this century does more than 0.1 GFLOP/s
    assert spec.mem_bandwidth > 1e8
    assert spec.mem_capacity > 2**28
    assert spec.price_per_hour == 0.0
    assert spec.peak_flops("bf16") == spec.flops["fp32"]
    cache_file = tmp_path / "cache" / "cpu_probe.json"
    assert json.loads(cache_file.read_text())["spec"]["name"] == "local_cpu"

    def no_measuring(key):
        raise AssertionError("the cached result should have been used")

    monkeypatch.setattr(cpu_probe, "_measure", no_measuring)
    assert cpu_probe.probe_local_cpu() == spec
    assert load_device("local_cpu") == spec


def test_local_cpu_probe_remeasures_on_a_corrupt_or_foreign_cache(tmp_path):
    cache_file = tmp_path / "cache" / "cpu_probe.json"
    cache_file.parent.mkdir(parents=True)
    cache_file.write_text("{not json", encoding="utf-8")
    assert cpu_probe.probe_local_cpu().flops["fp32"] > 0
    payload = json.loads(cache_file.read_text())
    payload["key"]["cores"] += 1  # as if written on another machine
    payload["spec"]["flops"]["fp32"] = 1.0
    cache_file.write_text(json.dumps(payload), encoding="utf-8")
    assert cpu_probe.probe_local_cpu().flops["fp32"] > 1.0


def test_local_cpu_probe_without_cache_leaves_no_file(tmp_path):
    assert cpu_probe.probe_local_cpu(cache=False).mem_bandwidth > 0
    assert not (tmp_path / "cache" / "cpu_probe.json").exists()
