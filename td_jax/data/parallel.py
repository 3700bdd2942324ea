"""Ordered parallel map over spawned worker processes, for dataset builders."""
from __future__ import annotations

import concurrent.futures
import multiprocessing
from typing import Callable, Iterator, Sequence


def parallel_map(fn: Callable, jobs: Sequence, num_workers: int, *, min_jobs: int = 1) -> Iterator:
    """``map(fn, jobs)`` in order, over ``num_workers`` spawned processes.

    Runs inline when ``num_workers <= 1`` or there are fewer than ``min_jobs`` jobs (spawning
    costs a second or two per worker).  ``fn`` must be importable (a module-level function).
    "spawn" because the parent may hold JAX/XLA threads, which a fork would not copy safely;
    a dead worker raises ``BrokenProcessPool`` instead of hanging.
    """
    if num_workers <= 1 or len(jobs) < min_jobs:
        yield from map(fn, jobs)
        return
    chunk = max(1, min(64, len(jobs) // (4 * num_workers)))
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            yield from pool.map(fn, jobs, chunksize=chunk)
        finally:
            pool.shutdown(cancel_futures=True)
