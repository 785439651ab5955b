"""Multi-process load generation: one arrival schedule split across worker processes, one run.

For request rates one core cannot drive, `run_load_workers` starts N worker processes (spawned,
so no event loop or thread state is inherited), gives worker i the jobs i, i + N, i + 2N, ... of
the schedule (each share keeps its arrival order) and 1/N of the concurrency (the first
`concurrency mod N` workers take one more), and starts them all at one shared run start `t0` on
the system-wide monotonic clock (`time.monotonic()` is CLOCK_MONOTONIC on Linux and macOS, the
same in every process), so every record's times are relative to the same zero as in a
single-process run. Workers send their records back in batches every `BATCH_S` seconds (off the
hot path of each request); the parent hands each to `on_record` in the order received. The
records, their schema and the summary are exactly those of a single-process run.

On Ctrl-C every process receives SIGINT (a cancelled run sends it to the workers itself):
workers record their requests in flight as `interrupted`, send what they hold and end; the
parent collects those records (for at most `DRAIN_S`) before re-raising, so a partial run loses
nothing that finished.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from multiprocessing.connection import Connection

from paretoserve.bench.client import ClientConfig
from paretoserve.bench.eventloop import run
from paretoserve.bench.loadgen import Job, LiveStats, LoadShape, run_load
from paretoserve.errors import UserError
from paretoserve.metrics.records import RequestRecord

#: Seconds between two batches of records sent by a worker.
BATCH_S = 0.05
#: Seconds from the last worker being ready to the shared run start.
START_MARGIN_S = 0.2
#: Seconds the parent waits for the workers' last records after Ctrl-C or the end of the run.
DRAIN_S = 10.0


def split(jobs: Sequence[Job], shape: LoadShape, workers: int) -> list[tuple[list[Job], LoadShape]]:
    """Each worker's jobs and load shape (module docstring)."""
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if shape.concurrency is not None and shape.concurrency < workers:
        raise UserError(f"--workers {workers} needs a concurrency of at least {workers} (one request in "
                        f"flight per worker), got {shape.concurrency}")
    shares = []
    for i in range(workers):
        concurrency = None
        if shape.concurrency is not None:
            concurrency = shape.concurrency // workers + (1 if i < shape.concurrency % workers else 0)
        shares.append((list(jobs[i::workers]), replace(shape, concurrency=concurrency)))
    return shares


def _worker(conn: Connection, jobs: list[Job], config: ClientConfig, shape: LoadShape) -> None:
    """Worker process: wait for the run start, send the jobs, stream records back in batches."""
    batch: list[RequestRecord] = []
    sent = 0

    def on_record(record: RequestRecord) -> None:
        batch.append(record)

    async def main() -> None:
        nonlocal sent
        stats = LiveStats(len(jobs))
        load = asyncio.ensure_future(run_load(jobs, config, shape, on_record, stats=stats, t0_s=t0))
        try:
            while not load.done():
                await asyncio.wait({load}, timeout=BATCH_S)
                if batch or stats.sent != sent:
                    sent = stats.sent
                    conn.send((sent, batch[:]))
                    batch.clear()
            await load
        except asyncio.CancelledError:
            load.cancel()
            await asyncio.gather(load, return_exceptions=True)
            raise

    conn.send("ready")
    t0 = conn.recv()
    try:
        run(main())
    except KeyboardInterrupt:
        pass
    finally:
        conn.send((sent, batch))
        conn.send(None)
        conn.close()


async def run_load_workers(jobs: Sequence[Job], config: ClientConfig, shape: LoadShape,
                           on_record: Callable[[RequestRecord], None], *, workers: int,
                           stats: LiveStats | None = None) -> float:
    """`run_load` over `workers` processes; returns the shared run start on the monotonic clock (s)."""
    shares = split(jobs, shape, workers)
    context = multiprocessing.get_context("spawn")
    conns: list[Connection] = []
    processes = []
    for share_jobs, share_shape in shares:
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(child, share_jobs, config, share_shape), daemon=True)
        process.start()
        child.close()
        conns.append(parent)
        processes.append(process)
    loop = asyncio.get_running_loop()
    started = False
    try:
        for conn in conns:
            if await loop.run_in_executor(None, conn.recv) != "ready":
                raise RuntimeError("a load-generator worker failed to start")
        t0 = time.monotonic() + START_MARGIN_S
        for conn in conns:
            conn.send(t0)
        finished = _collect(conns, on_record, stats)
        started = True
        await finished
    except asyncio.CancelledError:
        for process in processes:  # a cancelled run (not only Ctrl-C in a terminal) stops the workers too
            if process.pid is not None and process.is_alive():
                if started:
                    os.kill(process.pid, signal.SIGINT)
                else:
                    process.kill()  # cancelled while starting: nothing was sent
        if started:  # the workers record their requests in flight as interrupted and send them
            await asyncio.wait({finished}, timeout=DRAIN_S)
        raise
    finally:
        for process in processes:
            process.join(timeout=DRAIN_S)
            if process.is_alive():
                process.kill()
    return t0


def _deliver(message: object, sent: list[int], i: int, on_record: Callable[[RequestRecord], None],
             stats: LiveStats | None) -> bool:
    """Hand one worker message's records on; False when the worker has finished."""
    if message is None:
        return False
    if message == "ready":
        return True
    count, records = message  # type: ignore[misc]
    for record in records:
        on_record(record)
        if stats is not None:
            stats.on_record(record)
    sent[i] = count
    if stats is not None:
        stats.sent = sum(sent)
    return True


def _collect(conns: list[Connection], on_record: Callable[[RequestRecord], None],
             stats: LiveStats | None) -> asyncio.Future[None]:
    """Start receiving records from every worker: one reader thread per worker (blocking `recv`,
    so a message is always read whole) hands each message to the event loop. The future returned
    is done when every worker has finished."""
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    open_conns = set(range(len(conns)))
    sent = [0] * len(conns)

    def deliver(i: int, message: object) -> None:
        if not _deliver(message, sent, i, on_record, stats):
            open_conns.discard(i)
            if not open_conns and not finished.done():
                finished.set_result(None)

    def reader(i: int) -> None:
        message: object = "ready"
        while message is not None:
            try:
                message = conns[i].recv()
            except (EOFError, OSError):
                message = None
            loop.call_soon_threadsafe(deliver, i, message)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(len(conns))]
    for thread in threads:
        thread.start()
    return finished
