"""Independent tasks on one thread per CPU core (Arrow and numpy release the GIL)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Hashable, TypeVar

T = TypeVar("T")


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parallel(tasks: dict[Hashable, Callable[[], T]]) -> dict[Hashable, T]:
    """Run independent zero-argument tasks on one thread per CPU core -> {key: result}.

    Pays off because Arrow kernels and large numpy operations release the GIL; results
    do not depend on the number of threads or on the order tasks finish in.
    """
    workers = min(cores(), len(tasks))
    if workers <= 1:
        return {key: task() for key, task in tasks.items()}
    with ThreadPoolExecutor(workers) as pool:
        futures = {key: pool.submit(task) for key, task in tasks.items()}
        return {key: future.result() for key, future in futures.items()}
