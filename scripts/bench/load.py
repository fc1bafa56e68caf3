"""A loaded machine on demand: N CPU-burning processes beside a benchmark (its `--busy N`).

Other processes on the cores are what a cohort run meets on a shared workstation; a figure
that only holds on a quiet machine is half a figure. The burners stop with the block, and on
their own when the benchmark that started them is gone.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from typing import Iterator


def _burn(parent: int) -> None:
    while os.getppid() == parent:
        for _ in range(1_000_000):
            pass


@contextlib.contextmanager
def busy_cores(n: int) -> Iterator[None]:
    """`n` CPU-burning processes for the duration of the block (none with n = 0)."""
    procs = [multiprocessing.Process(target=_burn, args=(os.getpid(),), daemon=True) for _ in range(n)]
    for proc in procs:
        proc.start()
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
            proc.join()


def describe(n: int) -> str:
    return f"{n} CPU-burning background process(es); load average {os.getloadavg()[0]:.1f}" if n else "quiet (no burners)"
