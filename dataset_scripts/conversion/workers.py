"""Run the per-image jobs, in this process or in worker processes that never outlive it.

Workers must not be left behind when the converter dies: on Linux each worker asks the kernel to
kill it when its parent dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), so even a SIGKILL of the
converter leaves no orphan. Workers ignore Ctrl-C (the terminal sends it to the whole process
group): the parent stops the pool and cleans up, as for any other error.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm import tqdm

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
Job = TypeVar("Job")
Result = TypeVar("Result")


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d)", ctypes.get_errno())
    except (OSError, AttributeError) as err:  # no libc symbol: keep working without the guard
        logger.warning("cannot tie workers to the converter's life: %s", err)


def _init_worker(parent_pid: int | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's cleanup handler
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by `run_jobs` around the fork
    die_with_parent()
    # Forked workers are the converter's children: if it died before prctl took effect, stop.
    # (forkserver/spawn workers are children of a helper that dies with the converter.)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def run_jobs(
    function: Callable[[Job], Result], jobs: Sequence[Job], num_workers: int, desc: str = "images"
) -> list[Result]:
    """``[function(job) for job in jobs]``, in ``num_workers`` processes when more than one.

    The first exception stops everything: pending jobs are cancelled, running ones finish, the
    workers exit, and the exception is raised here.
    """
    progress = dict(total=len(jobs), desc=desc, unit="img", disable=None)
    if num_workers <= 1 or len(jobs) <= 1:
        return [function(job) for job in tqdm(jobs, **progress)]
    context = multiprocessing.get_context()
    parent_pid = os.getpid() if context.get_start_method() == "fork" else None
    pool = ProcessPoolExecutor(
        max_workers=num_workers, mp_context=context, initializer=_init_worker, initargs=(parent_pid,)
    )
    try:
        # Workers are started by the submissions: block Ctrl-C/SIGTERM meanwhile, so that a worker
        # never runs the parent's handlers and the parent never gets the signal inside CPython's
        # at-fork callbacks (which swallow exceptions); a pending signal is delivered right after.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            results = pool.map(function, jobs, chunksize=1)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return list(tqdm(results, **progress))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
