"""Issue 11 (faults): a killed or interrupted ``--num-workers 2`` conversion leaves no worker and no folder.

The conversion runs in a subprocess (its own session, so the signals reach only it) whose picture
loading is slowed down, so that the signal arrives mid-run. Waits are bounded polls, not timings.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataset_scripts.atomic_io import remove_stale_temporaries
from dataset_scripts.cvat_to_panoptic import ConversionOptions, convert_exports
from tests.export_builders import coco_export, no_output_left, rect, write_picture

REPO = Path(__file__).resolve().parents[1]
IMAGES = 24
DEADLINE_S = 120

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

_SLOW_CONVERTER = """
import sys, time
import dataset_scripts.conversion.image as conversion
load = conversion.load_upright_rgb
def slow_load(*args, **kwargs):
    time.sleep(0.5)
    return load(*args, **kwargs)
conversion.load_upright_rgb = slow_load  # forked workers inherit the patch
from dataset_scripts.cvat_to_panoptic import main
sys.exit(main(sys.argv[1:]))
"""


def _export(root: Path) -> Path:
    images, anns = [], []
    for index in range(IMAGES):
        write_picture(root / "images" / f"{index:03d}.png", seed=index)
        images.append({"id": index + 1, "file_name": f"{index:03d}.png", "width": 16, "height": 12})
        anns.append(
            {"id": index + 1, "image_id": index + 1, "category_id": 1, "segmentation": [rect(1, 1, 9, 9)]}
        )
    return coco_export(root, images, anns, [{"id": 1, "name": "car"}])


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _start(tmp_path: Path) -> tuple[subprocess.Popen, Path, set[int]]:
    export = _export(tmp_path / "export")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    argv = ["--cvat", str(export), "--out", str(out), "--num-workers", "2", "--val-ratio", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CONVERTER, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    workers: set[int] = set()

    def started() -> bool:
        assert proc.poll() is None, proc.communicate()
        workers.update(_children(proc.pid))
        return len(workers) >= 2 and any(tmp_path.glob(".out.tmp-*"))

    _wait_until(started, "two workers and the temporary folder")
    return proc, out, workers


def _kill_leftovers(proc: subprocess.Popen, workers: set[int]) -> None:
    """Never leave an orphan behind, even when the test fails."""
    for pid in [proc.pid, *workers]:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=DEADLINE_S)


def test_sigkill_takes_the_workers_down_and_the_next_run_cleans_up(tmp_path):
    proc, out, workers = _start(tmp_path)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=DEADLINE_S)  # not communicate(): orphaned workers would hold the pipes
        _wait_until(lambda: not any(_alive(pid) for pid in workers), "the orphaned workers to die")
    finally:
        _kill_leftovers(proc, workers)
    assert list(tmp_path.glob(".out.tmp-*"))  # a SIGKILL cannot clean up ...
    convert_exports([tmp_path / "export"], out, ConversionOptions(val_ratio=0))
    assert not list(tmp_path.glob(".out.tmp-*"))  # ... the next run on the same output does
    assert len(list((out / "train").iterdir())) == IMAGES


@pytest.mark.parametrize(
    ("signum", "status", "message"),
    [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")],
)
def test_sigterm_and_ctrl_c_clean_up(tmp_path, signum, status, message):
    proc, out, workers = _start(tmp_path)
    try:
        os.killpg(proc.pid, signum)  # Ctrl-C reaches the whole process group, workers included
        _, stderr = proc.communicate(timeout=DEADLINE_S)
    finally:
        _kill_leftovers(proc, workers)
    assert proc.returncode == status, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {message}{' (SIGTERM)' if signum == signal.SIGTERM else ''}: nothing written to {out}"
    ]
    assert "Traceback" not in stderr
    assert no_output_left(tmp_path, out)
    assert not any(_alive(pid) for pid in workers)


def test_only_stale_temporaries_of_this_output_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = tmp_path / f".out.tmp-{host}-{dead.pid}-abc_1"
    live = tmp_path / f".out.tmp-{host}-{os.getpid()}-abc_2"
    other_host = tmp_path / f".out.tmp-elsewhere-{dead.pid}-abc_3"
    other_output = tmp_path / f".other.tmp-{host}-{dead.pid}-abc_4"
    for folder in (stale, live, other_host, other_output):
        folder.mkdir()
    assert remove_stale_temporaries(tmp_path / "out") == [stale]
    assert not stale.exists() and live.exists() and other_host.exists() and other_output.exists()


def test_a_swallowed_ctrl_c_still_stops_the_run_before_anything_is_committed(tmp_path, monkeypatch, caplog):
    """CPython ignores exceptions raised in at-fork callbacks: the recorded signal is raised later."""
    import contextlib

    from dataset_scripts.conversion import orchestrator as converter
    from dataset_scripts.conversion.interrupts import Interrupted
    from tests.export_builders import run_cli

    real_run_jobs = converter.run_jobs

    def run_jobs_losing_the_interrupt(*args, **kwargs):
        results = real_run_jobs(*args, **kwargs)
        with contextlib.suppress(Interrupted):  # as when raised inside a callback that swallows it
            signal.raise_signal(signal.SIGINT)
        return results

    monkeypatch.setattr(converter, "run_jobs", run_jobs_losing_the_interrupt)
    export = _export(tmp_path / "export")
    # What was installed before the run (SIG_IGN, not Python's handler, under `nohup ... &`) must come back.
    handler_before = signal.getsignal(signal.SIGINT)
    code, errors = run_cli(["--cvat", export, "--out", tmp_path / "out"], caplog)
    assert code == 130 and errors == [f"error: interrupted: nothing written to {tmp_path / 'out'}"]
    assert no_output_left(tmp_path, tmp_path / "out")
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored


def test_the_executor_race_on_cancelled_jobs_prints_no_traceback(monkeypatch):
    """CPython < 3.12 (gh-107219): when Ctrl-C/SIGTERM breaks the pool while `shutdown(cancel_futures=True)`
    cancels the pending jobs, the executor's manager thread raises InvalidStateError and `threading`
    prints its traceback (seen in CI). `run_jobs` drops exactly that; other thread errors still reach
    the hook that was installed before (here a recorder, standing for `threading`'s printer)."""
    import threading
    from concurrent.futures import InvalidStateError

    from dataset_scripts.conversion.workers import quiet_cancelled_future_race

    class _ExecutorManagerThread(threading.Thread):  # the name of CPython's manager thread class
        def run(self):
            raise InvalidStateError("CANCELLED: <Future state=cancelled>")

    class OtherThread(threading.Thread):
        def run(self):
            raise InvalidStateError("a real bug elsewhere")

    reported = []
    monkeypatch.setattr(threading, "excepthook", lambda args: reported.append(str(args.exc_value)))
    recorder = threading.excepthook
    with quiet_cancelled_future_race():
        for thread in (_ExecutorManagerThread(), OtherThread()):
            thread.start()
            thread.join()
    assert threading.excepthook is recorder
    assert reported == ["a real bug elsewhere"]


def _excepthook_name(_job: int) -> str:
    import threading

    return getattr(threading.excepthook, "__qualname__", repr(threading.excepthook))


def test_the_excepthook_is_swapped_only_while_jobs_can_be_cancelled(monkeypatch):
    """The gh-107219 hook is process-wide: `run_jobs` installs it after the workers started (a forked worker
    used to inherit it) and restores the previous one when the pool is gone."""
    import multiprocessing
    import threading

    from dataset_scripts.conversion import workers

    if multiprocessing.get_start_method() != "fork":
        pytest.skip("only forked workers inherit the parent's hook")
    swapped = []
    quiet = workers.quiet_cancelled_future_race

    def recording_quiet():
        swapped.append(True)
        return quiet()

    monkeypatch.setattr(workers, "quiet_cancelled_future_race", recording_quiet)
    before = threading.excepthook
    names = workers.run_jobs(_excepthook_name, [0, 1, 2], num_workers=2)
    assert swapped == [True]  # the pool did run under the hook
    assert not any("quiet_cancelled_future_race" in name for name in names), names
    assert threading.excepthook is before
