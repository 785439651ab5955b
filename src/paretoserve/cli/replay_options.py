"""Options shared by the commands that replay a measured run (`validate --measured`, `calibrate --from`):
the run's parallel layout and KV format, for runs whose folder does not record them."""

from __future__ import annotations

from typing import Annotated

import typer

Pp = Annotated[int | None, typer.Option("--pp", min=1, help="Pipeline stages of the run (per replica).")]
Dp = Annotated[int | None, typer.Option(
    "--dp", min=1, help="Data-parallel engines of the run (vLLM --data-parallel-size), replayed behind a "
                        "least-outstanding router.")]
ExpertParallel = Annotated[bool | None, typer.Option(
    "--expert-parallel/--no-expert-parallel",
    help="Whether the run used expert parallelism (vLLM --enable-expert-parallel).")]
KvDtype = Annotated[str | None, typer.Option("--kv-dtype", help="KV-cache dtype of the run (auto, fp8, ...).")]
