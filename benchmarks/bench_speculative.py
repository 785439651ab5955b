"""Published speculative-decoding speed-ups against the datasheet model (no tuning).

Each row simulates the published setup twice with the datasheet roofline — plain decoding and
speculative decoding with the stated K and acceptance — as a closed loop of `batch` users
(prompt and output lengths fixed), and compares the TPOT ratio plain / speculative with the
published speed-up. Sources: /work/shared/reference/engine_facts.md §6. Where a source does not
state the acceptance, the row says what it borrows; where K or the acceptance is not known at all,
the row is listed without a value.
"""

from __future__ import annotations

from typing import NamedTuple

from paretoserve.catalog.device import load_device
from paretoserve.catalog.model import load_model
from paretoserve.perf.layout import ParallelLayout
from paretoserve.perf.memory import kv_capacity
from paretoserve.perf.roofline import Roofline
from paretoserve.perf.speculative import Speculation, build_spec_decoder, kv_tokens_with_drafter
from paretoserve.sim import simulate
from paretoserve.workload.request import Request

PROMPT, OUTPUT = 1024, 256  # assumed: none of the sources below states its lengths for these figures


class Published(NamedTuple):
    """One published speed-up and the setup it was measured in."""

    name: str
    model: str
    hardware: str
    tp: int
    batch: int
    spec: Speculation | None
    speedup: float
    note: str


# DeepSeek-V3 report §5.4.3: the MTP token is accepted 85–90% of the time; 0.875 is the midpoint.
DSV3_RATE = 0.875
ROWS = (
    Published("SGLang DeepSeek-V3 MTP K=3 H200 TP8 batch 1", "DeepSeek-V3", "h200_sxm", 8, 1,
              Speculation("mtp", 3, acceptance_rate=DSV3_RATE), 1.8,
              "sglang docs deepseek_v3.md (§6.3); acceptance not stated there: α = 0.875 per position "
              "from the DeepSeek-V3 report (§6.2), which measured only the first draft position"),
    Published("SGLang DeepSeek-V3 MTP K=3 H200 TP8 batch 32", "DeepSeek-V3", "h200_sxm", 8, 32,
              Speculation("mtp", 3, acceptance_rate=DSV3_RATE), 1.5,
              "as above, batch 32"),
    Published("DeepSeek-V3 report MTP K=1 (H200 TP8 batch 1 assumed)", "DeepSeek-V3", "h200_sxm", 8, 1,
              Speculation("mtp", 1, acceptance_length=1 + DSV3_RATE), 1.8,
              "arXiv 2412.19437 §5.4.3 (§6.2): 85-90% acceptance, ~1.8x TPS; hardware and batch not stated"),
    Published("EAGLE-3 paper SGLang Llama-3.1-8B H100 batch 1", "Meta-Llama-3.1-8B", "h100_sxm", 1, 1,
              None, 373.25 / 158.34,
              "arXiv 2503.01840 (§6.1): not reproduced, K and acceptance length not in the extracted facts"),
)


def tpot(model_name: str, hardware: str, tp: int, batch: int, spec: Speculation | None) -> float:
    """Mean TPOT in seconds of `3 × batch` requests from `batch` closed-loop users."""
    model, device = load_model(model_name), load_device(hardware)
    layout = ParallelLayout(tp=tp)
    target = Roofline(model, device, layout=layout)
    kv = kv_capacity(model, device, layout=layout)
    decoder = None if spec is None else build_spec_decoder(spec, model, device, target, layout)
    kv_tokens = kv.tokens if decoder is None else kv_tokens_with_drafter(kv, decoder)
    requests = [Request(f"r{i}", 0.0, PROMPT, OUTPUT) for i in range(3 * batch)]
    records = list(simulate(requests, step_model=target, kv_tokens=kv_tokens, concurrency=batch,
                            speculative=decoder, prefix_caching=False))
    return sum(r.tpot_s for r in records) / len(records)


def run() -> list[dict]:
    rows = []
    for row in ROWS:
        if row.spec is None:
            rows.append({"name": f"speculative {row.name}", "value": None, "unit": "x speed-up",
                         "baseline": row.speedup, "note": row.note})
            continue
        plain = tpot(row.model, row.hardware, row.tp, row.batch, None)
        fast = tpot(row.model, row.hardware, row.tp, row.batch, row.spec)
        predicted = plain / fast
        error = 100 * (predicted / row.speedup - 1)
        rows.append({"name": f"speculative {row.name}", "value": predicted, "unit": "x speed-up",
                     "baseline": row.speedup, "ratio": predicted / row.speedup,
                     "note": f"error {error:+.0f}%; mean length {row.spec.mean_tokens:.3g}; {row.note}"})
    return rows
