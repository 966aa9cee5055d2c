"""What a running `qwen-chat serve` holds and uses: resident memory per worker (with its engine process)
and CPU time of the workers and of their engine processes, from the gunicorn master's pid."""

from __future__ import annotations

import psutil


def worker_rss_mib(master_pid: int) -> list[float]:
    """Per worker, its own resident memory and its engine process's (a child of the worker)."""
    return [
        sum(p.memory_info().rss for p in [worker, *worker.children()]) / 2**20
        for worker in psutil.Process(master_pid).children()
    ]


def worker_and_engine_rss_mib(master_pid: int) -> list[tuple[float, float]]:
    """Per worker, its own resident memory and its engine process's, apart."""
    return [
        (
            worker.memory_info().rss / 2**20,
            sum(engine.memory_info().rss for engine in worker.children()) / 2**20,
        )
        for worker in psutil.Process(master_pid).children()
    ]


def cpu_seconds(master_pid: int) -> dict[str, float]:
    """CPU time over the whole run, of the workers (event loops) and of their engine processes."""

    def used(procs: list[psutil.Process]) -> float:
        return round(sum(p.cpu_times().user + p.cpu_times().system for p in procs), 1)

    workers = psutil.Process(master_pid).children()
    engines = [engine for worker in workers for engine in worker.children()]
    return {"workers": used(workers), "engine_processes": used(engines)}
