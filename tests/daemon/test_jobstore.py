"""The job queue (daemon.jobs.JobStore) in-process on a temporary SQLite file: submit and its
request-id idempotency, the busy answer, queue order, list/count/update, the recovery of jobs a
dead daemon left running, and the job kinds' command lines. No daemon process is started."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from daemon.jobs import JOB_KINDS, BusyError, JobNotFoundError, JobStore, job_kind
from engine.errors import HyperlexError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path):
    made = JobStore(tmp_path / "jobs.sqlite3", tmp_path / "jobs")
    yield made
    made.close()


def submit(store: JobStore, kind: str = "selftest", request_id: str | None = None,
           max_queue: int = 100, **params):
    return store.submit(kind, "tiny-test", dict(params), request_id, max_queue)


def test_a_submitted_job_is_queued_with_its_own_run_dir(store, tmp_path):
    job, created = submit(store, max_steps=3, step_time=0.5)
    assert created and job["state"] == "queued" and job["kind"] == "selftest"
    assert job["profile"] == "tiny-test" and job["params"] == {"max_steps": 3, "step_time": 0.5}
    assert Path(job["run_dir"]) == tmp_path / "jobs" / str(job["id"])
    assert Path(job["run_dir"]).is_dir()
    assert job["resume"] is False and job["attempts"] == 0 and job["progress"] is None
    assert store.get(job["id"]) == job


def test_heavy_comes_from_the_kind_and_a_heavy_param_is_refused(store):
    train, _ = submit(store, "train", max_steps=2)
    light, _ = submit(store, "selftest")
    marked, _ = submit(store, "selftest-heavy")
    assert train["heavy"] is True and light["heavy"] is False and marked["heavy"] is True
    with pytest.raises(HyperlexError, match="'heavy' is not a param") as refused:
        submit(store, "selftest", heavy=True)
    assert type(refused.value).__name__ == "BadRequest"


def test_a_retried_request_id_returns_the_first_job(store):
    first, created = submit(store, request_id="req-1", max_steps=1)
    again, created_again = submit(store, request_id="req-1", max_steps=99)
    assert created and not created_again
    assert again == first and again["params"] == {"max_steps": 1}
    other, created_other = submit(store, request_id="req-2")
    assert created_other and other["id"] != first["id"]
    # jobs without a request id are never taken for one another
    assert submit(store)[0]["id"] != submit(store)[0]["id"]
    assert store.count("queued") == 4


def test_a_full_queue_answers_busy_but_a_retry_still_finds_its_job(store):
    first, _ = submit(store, request_id="req-1", max_queue=2)
    submit(store, max_queue=2)
    with pytest.raises(BusyError) as err:
        submit(store, request_id="req-3", max_queue=2)
    assert "2 queued" in err.value.message and err.value.hint
    assert store.count("queued") == 2
    assert submit(store, request_id="req-1", max_queue=2) == (first, False)
    store.update(first["id"], state="running")  # only queued jobs count against the cap
    assert submit(store, request_id="req-3", max_queue=2)[1]


def test_an_unknown_kind_is_refused_with_the_known_ones(store):
    with pytest.raises(HyperlexError) as err:
        submit(store, "no-such-kind")
    assert "unknown job kind" in err.value.message and "selftest" in err.value.hint
    assert store.list() == []


def test_next_queued_is_oldest_first_and_only_queued(store):
    ids = [submit(store)[0]["id"] for _ in range(4)]
    store.update(ids[0], state="running")
    store.update(ids[2], state="cancelled")
    assert [job["id"] for job in store.next_queued()] == [ids[1], ids[3]]


def test_list_is_newest_first_filtered_and_limited_and_count_matches(store):
    ids = [submit(store)[0]["id"] for _ in range(5)]
    store.update(ids[1], state="failed", error="exit code 3")
    assert [job["id"] for job in store.list()] == ids[::-1]
    assert [job["id"] for job in store.list(limit=2)] == [ids[4], ids[3]]
    failed = store.list("failed")
    assert [job["id"] for job in failed] == [ids[1]] and failed[0]["error"] == "exit code 3"
    assert store.count("queued") == 4 and store.count("failed") == 1
    assert store.count("running") == 0


def test_update_round_trips_progress_and_result_as_json(store):
    job, _ = submit(store)
    store.update(job["id"], state="running", pid=4242, started=12.5,
                 progress={"step": 3, "loss": 0.25}, checkpoint="ckpt/step-3")
    got = store.get(job["id"])
    assert got["state"] == "running" and got["pid"] == 4242 and got["started"] == 12.5
    assert got["progress"] == {"step": 3, "loss": 0.25} and got["checkpoint"] == "ckpt/step-3"
    store.update(job["id"], state="succeeded", result={"adapter_dir": "runs/1"}, progress=None)
    got = store.get(job["id"])
    assert got["result"] == {"adapter_dir": "runs/1"} and got["progress"] is None


def test_a_row_whose_json_cannot_be_read_is_listed_and_never_started(store):
    # A row written straight into jobs.sqlite3 (or torn) with params that are not JSON: before,
    # every job_list and job_get answered InternalError JSONDecodeError with a traceback.
    job, _ = submit(store, max_steps=2)
    other, _ = submit(store, max_steps=1)
    store.db.execute("UPDATE jobs SET params='{{{', progress='[' WHERE id=?", (job["id"],))
    listed = {j["id"]: j for j in store.list()}
    assert set(listed) == {job["id"], other["id"]}
    bad = store.get(job["id"])
    assert bad["params"] == {"unreadable_json": "{{{"} and bad["progress"] == {"unreadable_json": "["}
    with pytest.raises(HyperlexError, match="stored params are not a JSON object"):
        job_kind("selftest").command(bad)
    job_kind("selftest").command(store.get(other["id"]))  # the other job still starts


def test_get_of_an_unknown_job_says_so(store):
    with pytest.raises(JobNotFoundError) as err:
        store.get(404)
    assert "404" in err.value.message


def test_jobs_a_dead_daemon_left_running_are_interrupted_and_checkpointed_ones_resume(store):
    queued, with_checkpoint, without, done = (submit(store)[0]["id"] for _ in range(4))
    store.update(with_checkpoint, state="running", pid=11, checkpoint="ckpt/step-7")
    store.update(without, state="running", pid=12)
    store.update(done, state="succeeded")
    interrupted = store.mark_interrupted()
    assert sorted(job["id"] for job in interrupted) == [with_checkpoint, without]
    assert all(job["state"] == "running" for job in interrupted), "as they were found"
    assert store.count("running") == 0 and store.count("interrupted") == 2
    assert store.get(without)["finished"] is not None

    resumed = store.requeue_for_resume()
    assert [job["id"] for job in resumed] == [with_checkpoint]
    job = store.get(with_checkpoint)
    assert job["state"] == "queued" and job["resume"] is True
    assert job["pid"] is None and job["finished"] is None and job["checkpoint"] == "ckpt/step-7"
    assert store.get(without)["state"] == "interrupted"  # nothing to resume from
    assert store.get(done)["state"] == "succeeded" and store.get(queued)["state"] == "queued"
    assert [j["id"] for j in store.next_queued()] == [queued, with_checkpoint]


def test_jobs_survive_reopening_the_store(tmp_path):
    path, jobs_dir = tmp_path / "jobs.sqlite3", tmp_path / "jobs"
    first = JobStore(path, jobs_dir)
    job, _ = first.submit("selftest", "tiny-test", {"max_steps": 2}, "req-1", 10)
    first.close()
    again = JobStore(path, jobs_dir)
    try:
        assert again.get(job["id"]) == job
        assert again.submit("selftest", "tiny-test", {}, "req-1", 10) == (job, False)
    finally:
        again.close()


def test_every_job_kind_runs_a_module_of_the_package():
    for kind in JOB_KINDS.values():
        path = ROOT.joinpath(*kind.module.split("."))
        assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), kind
        assert kind.available()


def test_a_job_kinds_command_line_carries_its_params_profile_run_dir_and_resume():
    # Keys outside the kind's schema (a job stored by an older daemon) never become flags.
    job = {"params": {"max_steps": 4, "mode": "plain", "run": "/tmp/x", "stop_at_step": None},
           "profile": "tiny-test", "run_dir": "/state/jobs/7", "resume": True}
    argv = job_kind("train").command(job, python="py")
    assert argv == ["py", "-m", "engine.training.run", "--profile=tiny-test",
                    "--run-dir=/state/jobs/7", "--max-steps=4", "--mode=plain",
                    "--resume", "--progress-jsonl"]
    fresh = job_kind("selftest").command(dict(job, resume=False))
    assert fresh[:3] == [sys.executable, "-m", "daemon.selftest_job"]
    assert "--resume" not in fresh


def test_a_submit_whose_run_dir_cannot_be_made_leaves_no_job(store, monkeypatch):
    """The client is told the submit failed, so no job may stay queued behind its back."""
    kept, _ = submit(store)

    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device", str(self))

    monkeypatch.setattr(Path, "mkdir", full)
    with pytest.raises(OSError):
        submit(store)
    monkeypatch.undo()
    assert [job["id"] for job in store.list()] == [kept["id"]]
    again, created = submit(store)  # the store goes on taking jobs
    assert created and again["run_dir"] and Path(again["run_dir"]).is_dir()
