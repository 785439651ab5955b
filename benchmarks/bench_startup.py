"""Start-up time of the command line: `paretoserve --help` and `paretoserve catalog models`.

Each figure is the median wall time of `REPEATS` fresh interpreter processes (the cost a user pays
per command, import time included), after one warm-up run, with bytecode caching on (as for an
installed package, even where PYTHONDONTWRITEBYTECODE is set). Baseline: `python -c pass` in the
same run, the interpreter's own start-up. Target (issue 9): `paretoserve --help` under 0.3 s on
this machine kind. Also lists the heavy modules (optuna, plotly, pyarrow, ...) each command
imported, which should be none.
Runs in about 10 s: `python benchmarks/bench_startup.py`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

REPEATS = 9
HEAVY = ("optuna", "plotly", "pyarrow", "ray", "scipy", "pandas", "aiohttp", "torch")
_CLI = ("import sys\nsys.argv = ['paretoserve', *{argv!r}]\nfrom paretoserve.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n")
_HEAVY_PROBE = "\nimport json\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))))"


_ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, "COLUMNS": "80"}


def _wall_s(code: str) -> float:
    """Median wall time of `python -c code` over REPEATS fresh processes after a warm-up, seconds."""
    times = []
    for _ in range(REPEATS + 1):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL, env=_ENV)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _heavy_imported(argv: list[str]) -> list[str]:
    """The HEAVY modules loaded after running the command `argv` in a fresh process."""
    code = _CLI.format(argv=argv) + _HEAVY_PROBE.format(heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run() -> list[dict]:
    baseline = _wall_s("pass")
    rows = [{"name": "python -c pass", "value": baseline, "unit": "s", "note": f"median of {REPEATS}"}]
    for argv in (["--help"], ["catalog", "models"]):
        wall = _wall_s(_CLI.format(argv=argv))
        heavy = _heavy_imported(argv)
        note = "target < 0.3 s; " if argv == ["--help"] else ""
        rows.append({"name": "paretoserve " + " ".join(argv), "value": wall, "unit": "s", "baseline": baseline,
                     "ratio": wall / baseline,
                     "note": note + "heavy imports: " + (", ".join(heavy) if heavy else "none")})
    return rows


if __name__ == "__main__":
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from run_all import main

    main(["startup"])
