"""Network links between edge devices as distributions of bandwidth and latency (`LinkProfile`).

A link is described by the 10th, 50th and 90th percentiles of its goodput (bytes/s) and of its one-way
latency (seconds); the bundled profiles (Gigabit Ethernet, Wi-Fi 5, Wi-Fi 6, 5G) are in `links/`,
each number with its source. Between the percentiles the distribution is log-linear in the quantile
(and flat beyond p10 / p90), which `sample` draws from.

`load_link` accepts a bundled name ("gbe", "wifi5", "wifi6", "5g"; "ethernet", "wifi", ... as
aliases), a YAML file with the same fields, or a constant link written `BANDWIDTH@LATENCY`, e.g.
"100Mbps@2ms" (units: bps, kbps, Mbps, Gbps bits per second, or B/s, kB/s, MB/s, GB/s; s, ms, us).
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Literal

import numpy as np
import pydantic

from paretoserve.errors import UserError
from paretoserve.textfiles import read_yaml

_LINK_DIR = Path(__file__).with_name("links")
_ALIASES = {"ethernet": "gbe", "gige": "gbe", "1gbe": "gbe", "gigabit": "gbe", "wifi": "wifi6",
            "80211ac": "wifi5", "80211ax": "wifi6", "5gnr": "5g", "nr": "5g"}

#: Scenario -> (bandwidth percentile, latency percentile): p10 is the pessimistic case (low bandwidth,
#: high latency), p90 the optimistic one.
Scenario = Literal["p10", "p50", "p90"]
SCENARIOS: tuple[Scenario, ...] = ("p10", "p50", "p90")
_LATENCY_OF: dict[str, str] = {"p10": "p90", "p50": "p50", "p90": "p10"}


class Quantiles(pydantic.BaseModel, frozen=True, extra="forbid"):
    """p10 ≤ p50 ≤ p90 of a positive quantity."""

    p10: float = pydantic.Field(gt=0, allow_inf_nan=False)
    p50: float = pydantic.Field(gt=0, allow_inf_nan=False)
    p90: float = pydantic.Field(gt=0, allow_inf_nan=False)

    @pydantic.model_validator(mode="after")
    def _ordered(self) -> Quantiles:
        if not self.p10 <= self.p50 <= self.p90:
            raise ValueError(f"percentiles must be ordered p10 <= p50 <= p90, got {self.p10:g}, {self.p50:g}, "
                             f"{self.p90:g}")
        return self

    def sample(self, u: np.ndarray) -> np.ndarray:
        """Values at quantiles `u` (in [0, 1]): log-linear between p10, p50, p90, flat outside."""
        return np.exp(np.interp(u, [0.1, 0.5, 0.9], np.log([self.p10, self.p50, self.p90])))


class LinkProfile(pydantic.BaseModel, frozen=True, extra="forbid"):
    """A network link: goodput in bytes/s and one-way latency in seconds, as percentiles.

    Attributes:
        name: key ("wifi6").
        display_name: what it is ("Wi-Fi 6 (802.11ax, 2x2, 80 MHz)").
        bandwidth: goodput percentiles, bytes/s.
        latency: one-way latency percentiles, seconds.
        sources: field -> source for `bandwidth` and `latency`.
    """

    name: str = pydantic.Field(min_length=1)
    display_name: str = pydantic.Field(min_length=1)
    bandwidth: Quantiles
    latency: Quantiles
    sources: dict[str, str]

    @pydantic.model_validator(mode="after")
    def _sourced(self) -> LinkProfile:
        missing = [f for f in ("bandwidth", "latency") if not self.sources.get(f, "").strip()]
        if missing:
            raise ValueError(f"sources needs an entry for {', '.join(missing)}")
        return self

    def at(self, scenario: Scenario) -> tuple[float, float]:
        """(bandwidth B/s, latency s) of a scenario: "p10" = p10 bandwidth with p90 latency
        (pessimistic), "p50" = medians, "p90" = p90 bandwidth with p10 latency (optimistic)."""
        return getattr(self.bandwidth, scenario), getattr(self.latency, _LATENCY_OF[scenario])

    def transfer_seconds(self, nbytes: float, scenario: Scenario = "p50") -> float:
        """latency + bytes / bandwidth for one message of `nbytes` (0 bytes: no message, 0 s)."""
        if nbytes <= 0:
            return 0.0
        bandwidth, latency = self.at(scenario)
        return latency + nbytes / bandwidth


def bundled_links() -> list[str]:
    """Names of the bundled link profiles."""
    return sorted(_bundled())


def load_link(spec: str) -> LinkProfile:
    """The link `spec` names: bundled name or alias, a YAML file, or constant `BANDWIDTH@LATENCY`."""
    text = str(spec).strip()
    key = re.sub(r"[^a-z0-9]", "", text.lower())
    key = _ALIASES.get(key, key)
    if key in _bundled():
        return _bundled()[key]
    if "@" in text:
        return _constant(text)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise UserError("link file not found; give a bundled link name or an existing .yaml file", file=text)
        return _parse(read_yaml(path), str(path))
    raise UserError(f"unknown link '{text}'; bundled: {', '.join(bundled_links())} (aliases "
                    f"{', '.join(sorted(_ALIASES))}), a .yaml file, or BANDWIDTH@LATENCY such as 100Mbps@2ms")


@functools.cache
def _bundled() -> dict[str, LinkProfile]:
    links = (_parse(read_yaml(p), str(p)) for p in sorted(_LINK_DIR.glob("*.yaml")))
    return {link.name: link for link in links}


def _parse(data: object, file: str) -> LinkProfile:
    if not isinstance(data, dict):
        raise UserError("expected a mapping with name, display_name, bandwidth, latency, sources", file=file)
    try:
        return LinkProfile.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        raise UserError(first["msg"].removeprefix("Value error, "), file=file, field=field) from None


_BANDWIDTH_UNITS = {"bps": 1 / 8, "kbps": 1e3 / 8, "mbps": 1e6 / 8, "gbps": 1e9 / 8,
                    "b/s": 1.0, "kb/s": 1e3, "mb/s": 1e6, "gb/s": 1e9}
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}
_QUANTITY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-zµ/]+)\s*$")


def _quantity(text: str, units: dict[str, float], what: str, spec: str) -> float:
    match = _QUANTITY.match(text.lower())
    scale = units.get(match.group(2)) if match else None
    if match is None or scale is None:
        raise UserError(f"link {spec!r}: {what} {text.strip()!r} is not a number with a unit "
                        f"({', '.join(units)}); e.g. 100Mbps@2ms")
    value = float(match.group(1)) * scale
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"link {spec!r}: {what} must be positive")
    return value


def _constant(spec: str) -> LinkProfile:
    """A link with one fixed bandwidth and latency, from "100Mbps@2ms" (bps spellings are bits, B/s bytes)."""
    bw_text, _, lat_text = spec.partition("@")
    bandwidth = _quantity(bw_text, _BANDWIDTH_UNITS, "bandwidth", spec)
    latency = _quantity(lat_text, _TIME_UNITS, "latency", spec)
    return LinkProfile(name=spec, display_name=f"constant {spec}",
                       bandwidth=Quantiles(p10=bandwidth, p50=bandwidth, p90=bandwidth),
                       latency=Quantiles(p10=latency, p50=latency, p90=latency),
                       sources={"bandwidth": "user constant", "latency": "user constant"})
