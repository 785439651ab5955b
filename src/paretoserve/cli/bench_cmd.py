"""`paretoserve bench` (measure a real OpenAI-compatible server) and `paretoserve import-vllm`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from paretoserve.cli.app import app, console, err_console
from paretoserve.errors import UserError


def _headers(values: list[str]) -> dict[str, str]:
    """Parse repeated `--header 'Name: value'` options."""
    headers = {}
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise UserError(f"--header {value!r}: expected 'Name: value'")
        headers[name.strip()] = content.strip()
    return headers


def _extra_body(text: str | None) -> dict[str, object]:
    """Parse `--extra-body` (a JSON object)."""
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--extra-body: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise UserError("--extra-body: expected a JSON object, e.g. '{\"temperature\": 0}'")
    return data


@app.command("bench")
def bench_cmd(
    url: Annotated[str, typer.Option("--url", help="The server's OpenAI base URL, e.g. http://127.0.0.1:8000/v1.")],
    out: Annotated[Path, typer.Option("--out", "-o",
                                      help="Run folder to write (a folder of runs with --sweep).")],
    model: str | None = typer.Option(None, "--model", "-m",
                                     help="Model name to send (default: the first model at "
                                     "GET <url>/models)."),
    endpoint: str = typer.Option("completions", "--endpoint", help="completions or chat."),
    trace: str | None = typer.Option(None, "--trace", "-t",
                                     help="Bundled trace (azure-conv, azure-code, mooncake-conv) or a trace file."),
    arrival: str | None = typer.Option(None, "--arrival",
                                       help="trace, poisson, gamma:CV or constant "
                                       "(default: trace with --trace, else poisson)."),
    rate: float | None = typer.Option(None, "--rate", "-r", help="Requests/s (rescales a trace's arrivals)."),
    rate_scale: float | None = typer.Option(None, "--rate-scale", help="Factor on the trace's own rate."),
    concurrency: int | None = typer.Option(None, "--concurrency", "-c",
                                           help="Alone: keep this many requests in flight (closed loop). "
                                           "With --rate/--arrival: at most this many in flight."),
    requests: int | None = typer.Option(None, "--requests", "-n", help="Number of requests."),
    duration: float | None = typer.Option(None, "--duration", help="Stop sending after this many seconds."),
    prompt: str | None = typer.Option(None, "--prompt",
                                      help="Prompt lengths: N, uniform:A:B or lognormal:MEAN:SIGMA."),
    output: str | None = typer.Option(None, "--output", help="Output lengths (same forms as --prompt)."),
    max_prompt_tokens: int | None = typer.Option(None, "--max-prompt-tokens",
                                                 help="Clip every prompt to at most this many tokens."),
    max_output_tokens: int | None = typer.Option(None, "--max-output-tokens",
                                                 help="Clip every output to at most this many tokens."),
    sweep: bool = typer.Option(False, "--sweep", help="Double the rate from --rate (default 1 req/s) until "
                               "the server saturates; one run folder per rate under --out."),
    timeout: float = typer.Option(600.0, "--timeout", help="Per-request time limit, seconds."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="PARETOSERVE_API_KEY",
                                       help="Bearer token (never written to the run folder)."),
    header: Annotated[list[str] | None, typer.Option(
        "--header", help="Extra HTTP header 'Name: value' (repeatable).")] = None,
    ignore_eos: bool = typer.Option(True, "--ignore-eos/--no-ignore-eos",
                                    help="Ask for exactly the output length (ignore_eos, min_tokens)."),
    extra_body: str | None = typer.Option(None, "--extra-body",
                                          help="JSON object merged into every request."),
    tokenize: bool = typer.Option(True, "--tokenize/--no-tokenize",
                                  help="Use the server's tokenizer for exact prompt lengths."),
    slo: str | None = typer.Option(None, "--slo", help="SLO for goodput, e.g. ttft_p90=1s,tpot_p90=60ms."),
    seed: int = typer.Option(0, "--seed", help="Seed of arrivals, lengths and prompt words."),
    workers: int = typer.Option(1, "--workers", help="Load-generator processes sharing the schedule, for "
                                "rates one core cannot drive (same records and summary)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Live progress table."),
    max_failed_share: float = typer.Option(0.1, "--max-failed-share", min=0.0, max=1.0,
                                           help="Exit with status 1 when more than this share of the "
                                           "requests failed (the run is still written)."),
) -> None:
    """Measure a real OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp) with a workload.

    Exits 1 when more than --max-failed-share of the requests failed (default: more than 10%)."""
    from paretoserve.bench.runner import BenchSpec, run_bench, run_sweep
    from paretoserve.report.tables import print_summary
    from paretoserve.runs import REQUESTS_FILE

    if endpoint not in ("completions", "chat"):
        raise UserError(f"--endpoint {endpoint!r}: expected completions or chat")
    spec = BenchSpec(url=url, model=model, endpoint=endpoint, trace=trace, arrival=arrival,  # type: ignore[arg-type]
                     rate=rate, rate_scale=rate_scale, concurrency=concurrency, requests=requests,
                     duration_s=duration, prompt=prompt, output=output, max_prompt_tokens=max_prompt_tokens,
                     max_output_tokens=max_output_tokens, seed=seed, timeout_s=timeout, api_key=api_key,
                     headers=_headers(header or []), ignore_eos=ignore_eos,
                     extra_body=_extra_body(extra_body), tokenize=tokenize, slo=slo, workers=workers)
    live = console if progress else None
    try:
        if sweep:
            steps, reason = run_sweep(spec, out, console=live or console)
            console.print(f"sweep stopped: {reason}; {len(steps)} runs under {out}")
            return
        summary = run_bench(spec, out, console=live)
    except KeyboardInterrupt:
        if sweep:
            where = f"the runs so far are under {out} (see sweep.json)"
        else:
            where = f"partial run written to {out}" if (out / REQUESTS_FILE).is_file() else "no run written"
        err_console.print(f"[yellow]interrupted[/]: {where}")
        raise typer.Exit(code=130) from None
    print_summary(summary, title=f"bench {url} ({out})", console=console)
    if summary.requests and summary.failed / summary.requests > max_failed_share:
        err_console.print(f"[red]{summary.failed:,} of {summary.requests:,} requests failed "
                          f"({summary.failed / summary.requests:.0%}, more than --max-failed-share "
                          f"{max_failed_share:.0%})[/]{_common_error(out)}; the run is written to {out}",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(code=1)


def _common_error(run_dir: Path) -> str:
    """': most often <kind> (<example>)' for the run's failed requests, '' when none is recorded."""
    from paretoserve.bench.client import error_kind
    from paretoserve.runs import read_run

    errors = [r.error for r in read_run(run_dir).records if r.error]
    if not errors:
        return ""
    kind, _ = Counter(error_kind(e) for e in errors).most_common(1)[0]
    example = next(e for e in errors if error_kind(e) == kind)
    return f": most often {kind} ({example})"


@app.command("import-vllm")
def import_vllm_cmd(
    source: Annotated[Path, typer.Argument(help="vLLM bench serve result .json, per-request .jsonl, or a "
                                           "folder with requests.jsonl (+ meta.json).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")],
    slo: str | None = typer.Option(None, "--slo", help="SLO for goodput, e.g. ttft_p90=1s,tpot_p90=60ms."),
) -> None:
    """Import a vLLM measurement into a paretoserve run folder."""
    from paretoserve.bench.importers import import_vllm
    from paretoserve.metrics.slo import parse_slo
    from paretoserve.report.tables import print_summary

    if not source.exists():
        raise UserError(f"{str(source)!r} does not exist")
    summary = import_vllm(source, out, slo=None if slo is None else parse_slo(slo))
    print_summary(summary, title=f"imported {source} ({out})", console=console)
