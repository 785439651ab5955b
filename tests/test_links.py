"""Link profiles: bundled percentiles against the standards' PHY rates, scenario pairing, constant specs
by hand, and bad specs as one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from paretoserve.catalog.device import load_device
from paretoserve.catalog.links import bundled_links, load_link
from paretoserve.errors import UserError


def test_bundled_links_are_sourced_distributions():
    assert bundled_links() == ["5g", "gbe", "wifi5", "wifi6"]
    for name in bundled_links():
        link = load_link(name)
        assert link.bandwidth.p10 < link.bandwidth.p90 and link.latency.p10 < link.latency.p90
        assert link.sources["bandwidth"] and link.sources["latency"]


@pytest.mark.parametrize(("name", "phy_bits_per_s"), [("gbe", 1e9), ("wifi5", 866.7e6), ("wifi6", 1201e6)])
def test_goodput_stays_below_the_phy_rate(name, phy_bits_per_s):
    """IEEE 802.3ab 1 Gb/s; 802.11ac 2x2 80 MHz MCS9 866.7 Mb/s; 802.11ax 2x2 80 MHz MCS11 1201 Mb/s."""
    assert load_link(name).bandwidth.p90 * 8 < phy_bits_per_s


def test_scenarios_pair_low_bandwidth_with_high_latency():
    link = load_link("wifi6")
    assert link.at("p10") == (link.bandwidth.p10, link.latency.p90)
    assert link.at("p90") == (link.bandwidth.p90, link.latency.p10)
    # 1 MB over the median Wi-Fi 6 link: 2 ms + 1e6 / 62.5e6 s = 18 ms (by hand).
    assert link.transfer_seconds(1e6) == pytest.approx(0.002 + 0.016)
    assert link.transfer_seconds(0) == 0.0


def test_sampling_hits_the_percentiles():
    link = load_link("5g")
    draws = link.bandwidth.sample(np.random.default_rng(0).random(200_000))
    assert np.percentile(draws, [10, 50, 90]) == pytest.approx([1.25e6, 6.25e6, 18.75e6], rel=0.02)


def test_constant_links_and_aliases():
    link = load_link("100Mbps@2ms")
    assert link.at("p10") == link.at("p90") == (12.5e6, 0.002)
    assert load_link("10MB/s@50us").at("p50") == pytest.approx((10e6, 50e-6))
    assert load_link("Ethernet").name == "gbe" and load_link("Wi-Fi 6").name == "wifi6"


def test_edge_devices_resolve():
    for typed, name in [("pi4", "raspberry_pi_4"), ("pi5", "raspberry_pi_5"), ("jetson_orin_nx", "jetson_orin_nx_16gb"),
                        ("orin-nano", "jetson_orin_nano_8gb")]:
        assert load_device(typed).name == name
    # Raspberry Pi 5 product brief: LPDDR4X-4267 on a 32-bit bus = 17.07 GB/s.
    assert load_device("pi5").mem_bandwidth == pytest.approx(4267e6 * 4, rel=1e-3)


@pytest.mark.parametrize(("spec", "message"), [
    ("wifi7", "unknown link 'wifi7'"),
    ("fast@2ms", "bandwidth 'fast' is not a number with a unit"),
    ("100Mbps@soon", "latency 'soon' is not a number with a unit"),
    ("0Mbps@1ms", "bandwidth must be positive"),
    ("missing/link.yaml", "link file not found"),
])
def test_bad_link_specs_are_one_line_errors(spec, message):
    with pytest.raises(UserError, match=message) as info:
        load_link(spec)
    assert "\n" not in str(info.value)


def test_bad_link_file_names_the_field(tmp_path):
    path = tmp_path / "l.yaml"
    path.write_text("name: x\ndisplay_name: x\nbandwidth: {p10: 3, p50: 2, p90: 1}\n"
                    "latency: {p10: 1, p50: 1, p90: 1}\nsources: {bandwidth: a, latency: b}\n")
    with pytest.raises(UserError, match="field 'bandwidth'.*ordered"):
        load_link(str(path))
