"""The job scheduler (daemon/scheduler.py) with a real JobStore and a fake process runner."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest

from daemon.jobs import JobStore
from daemon.scheduler import JobScheduler
from tests.daemon.fakes import FakeRunner


@pytest.fixture
def setup(tmp_path: Path):
    store = JobStore(tmp_path / "jobs.sqlite3", tmp_path / "jobs")
    runner = FakeRunner(obey_terminate=False)
    events: list[tuple[str, dict]] = []
    scheduler: JobScheduler | None = None

    def post(item: tuple) -> None:  # the loop would hand it back; here it is handed at once
        assert scheduler is not None
        if item[0] == "line":
            scheduler.write_lines({item[1]: [item[2]]})
        else:
            scheduler.on_item(*item)

    scheduler = JobScheduler(store, lambda t, d: events.append((t, d)), post, heavy_jobs=1,
                             light_jobs=1, runner=runner)
    yield store, scheduler, runner, events
    store.close()


def submit(store: JobStore, heavy: bool = False) -> int:
    job, _ = store.submit("selftest-heavy" if heavy else "selftest", "tiny-test", {}, None, 64)
    return job["id"]


def test_one_heavy_and_one_light_run_and_the_next_starts_on_exit(setup):
    store, scheduler, runner, events = setup
    h1, h2, l1, l2 = submit(store, True), submit(store, True), submit(store), submit(store)
    scheduler.schedule()
    assert sorted(runner.started) == [h1, l1]
    assert scheduler.job_counts == {"queued": 2, "running": 2, "interrupted": 0}
    runner.started[h1].exit(0)
    assert store.get(h1)["state"] == "succeeded" and sorted(runner.started) == [h1, h2, l1]
    runner.started[l1].exit(1)
    assert store.get(l1)["state"] == "failed" and l2 in runner.started
    assert (f"job.{h1}.progress", {"event": "state", "state": "succeeded",
                                     "exit_code": 0}) in events


def test_events_update_the_store_and_lines_reach_the_log(setup):
    store, scheduler, runner, events = setup
    job_id = submit(store)
    scheduler.schedule()
    proc = runner.started[job_id]
    proc.emit({"event": "checkpoint", "step": 3, "path": "/ck"})
    proc.post(("line", job_id, "hello from the job"))
    assert store.get(job_id)["checkpoint"] == "/ck"
    assert (f"job.{job_id}.log", {"lines": ["hello from the job"]}) in events
    assert "hello from the job" in (Path(store.get(job_id)["run_dir"]) / "log.txt").read_text()


def test_cancel_and_stop(setup):
    store, scheduler, runner, _ = setup
    running, queued = submit(store), submit(store)
    scheduler.schedule()
    assert scheduler.cancel(queued)["state"] == "cancelled"
    scheduler.cancel(running)
    assert runner.started[running].terminated
    runner.started[running].exit(-15)
    assert store.get(running)["state"] == "cancelled"
    again = submit(store)
    scheduler.schedule()
    scheduler.stop()
    assert runner.started[again].terminated
    runner.started[again].exit(-15)
    assert store.get(again)["state"] == "interrupted"
    submit(store)
    scheduler.schedule()  # stopping: nothing new starts
    assert len(runner.started) == 2


def test_a_job_queued_on_a_full_disk_starts_once_space_is_back_with_nothing_else_happening(
        setup, monkeypatch):
    """Nothing but the loop's timer runs here: no submit, no exit, no request wakes it."""
    store, scheduler, runner, _ = setup
    full = {"now": True}

    def start(job_id, argv, run_dir, post):
        if full["now"]:
            raise OSError(errno.ENOSPC, "No space left on device", str(run_dir))
        return runner(job_id, argv, run_dir, post)

    scheduler.runner = start
    monkeypatch.setattr("daemon.scheduler.START_RETRY_S", 0.05)
    job_id = submit(store)
    scheduler.schedule()
    assert store.get(job_id)["state"] == "queued" and job_id not in runner.started
    scheduler.check_timers()  # still full: it stays queued and is tried again later
    time.sleep(0.06)
    scheduler.check_timers()
    assert store.get(job_id)["state"] == "queued"
    full["now"] = False
    scheduler.check_timers()  # the next look is not due yet
    assert job_id not in runner.started
    time.sleep(0.06)
    scheduler.check_timers()
    assert store.get(job_id)["state"] == "running" and job_id in runner.started


def test_the_timer_starts_a_job_that_was_queued_without_a_schedule(setup, monkeypatch):
    """A job in the queue that nothing scheduled (a submit whose reply failed after the row
    was written) is started by the timer, not left for the next event."""
    store, scheduler, runner, _ = setup
    monkeypatch.setattr("daemon.scheduler.START_RETRY_S", 0.05)
    job_id = submit(store)
    scheduler.check_timers()
    assert store.get(job_id)["state"] == "running" and job_id in runner.started
