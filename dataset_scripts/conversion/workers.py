"""Run the per-image jobs, in this process or in worker processes that never outlive it.

Workers must not be left behind when the converter dies: on Linux each worker asks the kernel to
kill it when its parent dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), so even a SIGKILL of the
converter leaves no orphan. Workers ignore Ctrl-C (the terminal sends it to the whole process
group): the parent stops the pool and cleans up, as for any other error.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import InvalidStateError, ProcessPoolExecutor
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


@contextlib.contextmanager
def quiet_cancelled_future_race() -> Iterator[None]:
    """Silence one known, harmless CPython < 3.12 race (gh-107219) while a pool's jobs may be cancelled.

    When Ctrl-C/SIGTERM kills the workers (the whole process group gets it) while the parent's
    ``shutdown(cancel_futures=True)`` cancels the pending jobs, the executor's manager thread may try
    to set a ``BrokenProcessPool`` exception on an already cancelled future: ``InvalidStateError``,
    whose traceback `threading` prints, though the jobs were cancelled on purpose. Only that
    exception from that thread is dropped; anything else reaches the previous hook, which is restored
    on exit. `run_jobs` holds it only while jobs can be cancelled (after the workers started).
    """
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        manager_thread = type(args.thread).__name__ == "_ExecutorManagerThread"
        if args.exc_type is InvalidStateError and manager_thread:
            logger.debug("ignored the executor's InvalidStateError on a cancelled job (CPython gh-107219)")
            return
        previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


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
    quiet = contextlib.ExitStack()
    try:
        # Workers are started by the submissions: block Ctrl-C/SIGTERM meanwhile, so that a worker
        # never runs the parent's handlers and the parent never gets the signal inside CPython's
        # at-fork callbacks (which swallow exceptions); a pending signal is delivered right after.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            results = pool.map(function, jobs, chunksize=1)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        # Jobs are cancelled only from here on (by `map`'s iterator when it stops early, then by
        # `shutdown`): the hook is held for that window alone, after the workers started, so that no
        # worker inherits it and the process-wide hook is back as soon as the pool is gone.
        quiet.enter_context(quiet_cancelled_future_race())
        return list(tqdm(results, **progress))
    finally:
        with quiet:
            pool.shutdown(wait=True, cancel_futures=True)
