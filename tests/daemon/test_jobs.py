"""The job queue with real worker processes: progress, cancel, busy, kill -9 and resume."""

from __future__ import annotations

import time

import pytest

from daemon.client import DaemonError
from daemon.jobs import JobLog
from daemon.selftest_job import loss_at


def _progress(stream, until, timeout=30.0):
    """Collect events until `until(event)` is true."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = stream.next(timeout=deadline - time.monotonic())
        if event is None:
            break
        seen.append(event)
        if until(event):
            return seen
    raise AssertionError(f"condition not met; saw {[e.data for e in seen][-5:]}")


def test_selftest_job_runs_and_reports(client):
    job = client.job_submit("selftest", {"max_steps": 6, "step_time": 0.01})["job"]
    assert job["state"] in ("queued", "running")
    done = client.wait_job(job["id"], timeout=30)
    assert done["state"] == "succeeded"
    assert done["result"]["final_loss"] == loss_at(6)
    lines = client.job_logs(job["id"])["lines"]
    assert any("checkpoint at step 5" in line for line in lines)
    assert lines[-1].endswith("succeeded (exit code 0)")


def test_request_id_makes_submit_idempotent(client):
    first = client.job_submit("selftest", {"max_steps": 1}, request_id="req-1")
    again = client.job_submit("selftest", {"max_steps": 1}, request_id="req-1")
    assert first["created"] and not again["created"]
    assert first["job"]["id"] == again["job"]["id"]
    assert len(client.job_list()["jobs"]) == 1


def test_failed_job_and_unknown_kind(client):
    job = client.job_submit("selftest", {"max_steps": 5, "step_time": 0.01, "fail_at": 2})["job"]
    done = client.wait_job(job["id"])
    assert done["state"] == "failed" and "exit code 3" in done["error"]
    with pytest.raises(DaemonError) as err:
        client.job_submit("no-such-kind")
    assert "unknown job kind" in err.value.message


def test_cancel_sends_sigterm_and_the_job_checkpoints(client):
    job = client.job_submit("selftest", {"max_steps": 1000, "step_time": 0.02})["job"]
    with client.events(f"job.{job['id']}.progress") as stream:
        _progress(stream, lambda e: e.data.get("event") == "step" and e.data["step"] >= 3)
        client.job_cancel(job["id"])
        seen = _progress(stream, lambda e: e.data.get("state") == "cancelled")
    checkpoints = [e.data for e in seen if e.data.get("event") == "checkpoint"]
    assert checkpoints, "SIGTERM must make the job checkpoint before it exits"
    assert client.job_get(job["id"])["job"]["state"] == "cancelled"


def test_cancel_escalates_to_sigkill(start_daemon):
    daemon = start_daemon(env={"HYPERLEX_DAEMON_CANCEL_GRACE_S": "0.5"})
    with daemon.client() as client:
        job = client.job_submit("selftest", {"max_steps": 1000, "step_time": 0.02,
                                             "ignore_sigterm": True})["job"]
        with client.events(f"job.{job['id']}.progress") as stream:
            _progress(stream, lambda e: e.data.get("event") == "step")
            t0 = time.monotonic()
            client.job_cancel(job["id"])
            seen = _progress(stream, lambda e: e.data.get("state") == "cancelled")
        assert seen[-1].data["exit_code"] == -9
        assert time.monotonic() - t0 >= 0.5
    assert "SIGKILL" in daemon.output()


def test_full_queue_answers_busy(start_daemon):
    daemon = start_daemon(env={"HYPERLEX_DAEMON_MAX_QUEUE": "2",
                               "HYPERLEX_DAEMON_LIGHT_JOBS": "1"})
    with daemon.client() as client:
        ids = [client.job_submit("selftest", {"max_steps": 1000})["job"]["id"] for _ in range(3)]
        with pytest.raises(DaemonError) as err:
            client.job_submit("selftest", {"max_steps": 1})
        assert err.value.type == "BusyError"
        states = [client.job_get(i)["job"]["state"] for i in ids]
        assert states == ["running", "queued", "queued"]


def test_heavy_jobs_run_one_at_a_time_with_light_ones_alongside(client):
    heavy = [client.job_submit("selftest-heavy", {"max_steps": 1000})["job"]["id"]
             for _ in range(2)]
    light = client.job_submit("selftest", {"max_steps": 1000})["job"]["id"]
    states = {i: client.job_get(i)["job"]["state"] for i in [*heavy, light]}
    assert states == {heavy[0]: "running", heavy[1]: "queued", light: "running"}
    client.job_cancel(heavy[0])
    deadline = time.monotonic() + 15
    while client.job_get(heavy[1])["job"]["state"] != "running":
        assert time.monotonic() < deadline, "the second heavy job never started"
        time.sleep(0.05)


def test_sigterm_on_the_daemon_checkpoints_jobs_and_the_next_start_resumes(start_daemon):
    first = start_daemon()
    with first.client() as client:
        job = client.job_submit("selftest", {"max_steps": 120, "step_time": 0.05,
                                             "checkpoint_every": 100})["job"]
        with client.events(f"job.{job['id']}.progress") as stream:
            _progress(stream, lambda e: e.data.get("event") == "step" and e.data["step"] >= 3)
    first.proc.terminate()
    assert first.proc.wait(timeout=30) == 0  # graceful: it waited for the job's checkpoint
    second = start_daemon()
    with second.client() as client:
        job = client.job_get(job["id"])["job"]
        assert job["checkpoint"] and job["resume"] is True  # only SIGTERM wrote a checkpoint
        done = client.wait_job(job["id"], timeout=60)
        assert done["state"] == "succeeded" and done["attempts"] == 2
        log = "\n".join(client.job_logs(job["id"], limit=5000)["lines"])
        assert "stopped by SIGTERM after checkpoint" in log and "(resume=True)" in log


def test_job_log_rotates_and_pages(tmp_path):
    log = JobLog(tmp_path, max_bytes=200, backups=2)
    for i in range(100):
        log.append(f"line {i:03d} " + "x" * 20)
    assert (tmp_path / "log.txt.1").exists() and (tmp_path / "log.txt.2").exists()
    assert not (tmp_path / "log.txt.3").exists()
    page = log.read(0, 5)
    total = page["total"]
    assert 10 < total < 100  # old lines rotated away, recent ones kept
    last = log.read(total - 1, 5)
    assert last["lines"] == [f"line 099 {'x' * 20}"] and last["next_offset"] == total
    numbers = [int(line.split()[1]) for line in log.read(0, 1000)["lines"]]
    assert numbers == sorted(numbers) and numbers[-1] == 99


def _kill9_and_resume(start_daemon, kind, params, min_step, timeout, profile=None):
    first = start_daemon()
    with first.client() as client:
        job = client.job_submit(kind, params, profile=profile)["job"]
        with client.events(f"job.{job['id']}.progress") as stream:
            seen = _progress(stream, lambda e: e.data.get("event") == "checkpoint"
                             and e.data["step"] >= min_step, timeout=timeout)
    losses_before = {e.data["step"]: e.data["loss"] for e in seen if e.data.get("event") == "step"}
    first.kill9()

    second = start_daemon()
    with second.client() as client:
        log = client.job_logs(job["id"], limit=5000)["lines"]
        assert any("interrupted: the daemon stopped" in line for line in log)
        with client.events(f"job.{job['id']}.progress") as stream:
            after = _progress(stream, lambda e: e.data.get("state") in ("succeeded", "failed"),
                              timeout=timeout)
        states = [e.data["state"] for e in after if e.data.get("event") == "state"]
        assert states[-1] == "succeeded" and "running" in states
        resumed_running = [e.data for e in after if e.data.get("state") == "running"]
        assert resumed_running[-1]["resume"] is True
        job = client.job_get(job["id"])["job"]
        assert job["attempts"] == 2
    steps = [e.data for e in after if e.data.get("event") == "step"]
    return losses_before, steps, job


def test_kill_9_mid_job_then_restart_resumes_from_checkpoint(start_daemon):
    before, steps, job = _kill9_and_resume(
        start_daemon, "selftest", {"max_steps": 40, "step_time": 0.03}, min_step=10, timeout=30)
    first_resumed = steps[0]["step"]
    assert 10 < first_resumed <= max(before) + 1 + 5  # continues after a checkpoint, not at 1
    assert all(s["loss"] == loss_at(s["step"]) for s in steps)  # the curve continues exactly
    assert steps[-1]["step"] == 40 and job["result"]["final_loss"] == loss_at(40)


def test_kill_9_during_tiny_training_resumes_and_loss_continues(start_daemon):
    before, steps, job = _kill9_and_resume(
        start_daemon, "train", {"max_steps": 30}, min_step=5, timeout=240,
        profile="tiny-test")
    last_step = max(before)
    print(f"\nkill -9 during training: loss at step 1 {before[min(before)]:.4f}, "
          f"last before kill step {last_step} {before[last_step]:.4f}; first after resume "
          f"step {steps[0]['step']} {steps[0]['loss']:.4f}; final step {steps[-1]['step']} "
          f"{steps[-1]['loss']:.4f}")
    assert steps[0]["step"] > 5  # resumed after a checkpoint, not from step 1
    # The loss goes on from where it was, below the untrained start.
    assert steps[0]["loss"] < before[min(before)]
    assert job["state"] == "succeeded" and job["result"]["adapter_dir"]
