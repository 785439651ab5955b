"""Energy and dollar cost of a simulated run — estimates from device power and price.

Energy of a replica on n devices over a run of D seconds, busy B of them:
    n × (B × P_busy + (D − B) × P_idle),  P_busy = P_idle + (P_max − P_idle) × activity.
`activity` (default 0.75) is the fraction of the idle-to-peak power range drawn while computing; it
is an estimate: Splitwise measured an average of ≈ 0.74 of peak power for Llama-2-70B serving on
A100/H100 (shared/data/static_batch/splitwise_perf_model.csv, columns peak_power/average_power).
Cost = price per device-hour × devices × D / 3600.
"""

from __future__ import annotations

from paretoserve.catalog.device import DeviceSpec
from paretoserve.sim.engine import SimStats

DEFAULT_ACTIVITY = 0.75
ACTIVITY_NOTE = ("estimate: busy power = idle + (max - idle) x activity; Splitwise measured an average "
                 "of ~0.74 of peak power for Llama-2-70B serving (splitwise_perf_model.csv)")


def device_joules(device: DeviceSpec, busy_s: float, duration_s: float,
                  activity: float = DEFAULT_ACTIVITY) -> float:
    """Joules one device draws over `duration_s` seconds of which it computes `busy_s` (capped)."""
    busy = min(busy_s, duration_s)
    busy_w = device.power_idle + (device.power_max - device.power_idle) * activity
    return busy * busy_w + (duration_s - busy) * device.power_idle


def energy_joules(stats: SimStats, device: DeviceSpec, activity: float = DEFAULT_ACTIVITY) -> float:
    """Joules drawn by all replicas' devices from t = 0 to the end of the run."""
    return sum(replica.engine.devices * device_joules(device, replica.busy_s, stats.duration_s, activity)
               for replica in stats.replicas)


def cost_usd(stats: SimStats, device: DeviceSpec) -> float:
    """US dollars for renting every replica's devices for the run's duration."""
    devices = sum(replica.engine.devices for replica in stats.replicas)
    return device.price_per_hour * devices * stats.duration_s / 3600.0
