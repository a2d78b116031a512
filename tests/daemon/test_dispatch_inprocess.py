"""Server dispatch in-process: a real Server on a thread and a real client over ipc, with the
fake chat backend and a fake job runner, so each case runs in well under a second.

The real-process tests (test_lifecycle, test_jobs, ...) stay for what only a process shows:
signals, kill -9, restarts, real job subprocesses.
"""

from __future__ import annotations

import time

import pytest

from tests.daemon.fakes import FakeRunner, InProcessDaemon


def event_data(daemon: InProcessDaemon, prefix: str) -> list[dict]:
    """The data of every retained event of topics under `prefix`."""
    topics = daemon.call("snapshot", prefix=prefix)["topics"]
    return [event["data"] for topic in topics.values() for event in topic["events"]]


def error_of(reply: dict) -> dict:
    assert reply["status"] == "error", reply
    return reply["error"]


def test_an_unknown_type_is_answered_and_the_daemon_carries_on(make_daemon):
    daemon = make_daemon()
    assert error_of(daemon.call("frobnicate"))["type"] == "UnknownType"
    assert daemon.call("hello")["status"] == "ok"


@pytest.mark.parametrize(("verb", "content", "field"), [
    ("job_get", {}, "'id'"),                                   # missing, loop verb
    ("job_get", {"id": "3"}, "'id' must be int, got str"),
    ("job_logs", {"id": True}, "'id' must be int, got bool"),  # bool is not an int
    ("chat", {"prompt": "hi", "temperature": "hot"}, "'temperature' must be int or float"),
    ("chat", {"prompt": "hi", "rag_k": 50}, "'rag_k'"),
    ("tokenize", {"text": 7}, "'text' must be str"),           # a pool verb
    ("memory_search", {"query": "q", "level": ["1"]}, "'level'"),
    ("job_submit", {"kind": "selftest", "params": {"Bad-Key": 1}}, "'Bad-Key'"),
])
def test_bad_requests_name_the_field(make_daemon, verb, content, field):
    error = error_of(make_daemon().call(verb, **content))
    assert error["type"] == "BadRequest" and field in error["message"], error


def test_unknown_fields_are_tolerated(make_daemon):
    assert make_daemon().call("job_list", limit=5, colour="blue")["jobs"] == []


def test_a_full_queue_answers_busy(make_daemon):
    # Nothing may start, so every job stays queued.
    daemon = make_daemon(max_queue=2, heavy_jobs=0, light_jobs=0)
    for _ in range(2):
        assert daemon.call("job_submit", kind="selftest")["created"] is True
    error = error_of(daemon.call("job_submit", kind="selftest"))
    assert error["type"] == "BusyError" and "2 queued" in error["message"]
    assert daemon.call("status")["counters"]["BusyError"] == 1


def test_while_stopping_only_hello_status_and_snapshot_are_answered(make_daemon):
    runner = FakeRunner(obey_terminate=False)  # a job still checkpointing keeps it stopping
    daemon = make_daemon(runner)
    job = daemon.call("job_submit", kind="selftest")["job"]
    assert daemon.call("shutdown") == {"status": "ok", "stopping": True, "running_jobs": 1}
    assert runner.started[job["id"]].terminated
    assert error_of(daemon.call("job_list"))["type"] == "ShuttingDown"
    assert error_of(daemon.call("chat", prompt="hi"))["type"] == "ShuttingDown"
    status = daemon.call("status")
    assert status["stopping"] is True and status["counters"]["ShuttingDown"] == 2
    assert daemon.call("hello")["status"] == "ok"
    assert daemon.call("snapshot", prefix="job.")["status"] == "ok"
    runner.started[job["id"]].exit(-15)  # it checkpointed: the loop ends
    daemon.thread.join(timeout=2)
    assert not daemon.thread.is_alive()


def test_a_profile_switch_happens_on_the_loop_and_shows_everywhere(make_daemon):
    daemon = make_daemon()
    assert daemon.call("profile_use", name="default") == {"status": "ok", "profile": "default"}
    # The reply is sent after the loop switched: every later request sees the new profile.
    assert daemon.call("hello")["profile"] == "default"
    assert daemon.call("status")["models"]["profile"] == "default"
    assert daemon.call("job_submit", kind="selftest")["job"]["profile"] == "default"
    assert {"event": "profile", "profile": "default"} in event_data(daemon, "daemon.status")
    error = error_of(daemon.call("profile_use", name="no-such-profile"))
    assert error["type"] == "ConfigError"
    assert daemon.call("hello")["profile"] == "default"


def test_jobs_start_within_the_heavy_and_light_limits(make_daemon):
    runner = FakeRunner()
    daemon = make_daemon(runner, heavy_jobs=1, light_jobs=2)
    heavy = [daemon.call("job_submit", kind="selftest-heavy")["job"]["id"]
             for _ in range(2)]
    light = [daemon.call("job_submit", kind="selftest")["job"]["id"] for _ in range(3)]
    assert sorted(runner.started) == [heavy[0], light[0], light[1]]
    assert daemon.call("job_get", id=heavy[1])["job"]["state"] == "queued"
    runner.started[heavy[0]].emit({"event": "done", "adapter_dir": None})
    runner.started[heavy[0]].exit(0)
    assert daemon.wait_job(heavy[0], "succeeded")["result"]["event"] == "done"
    daemon.wait_job(heavy[1], "running")
    runner.started[light[0]].exit(3)
    assert daemon.wait_job(light[0], "failed")["error"].startswith("exit code 3")
    daemon.wait_job(light[2], "running")
    assert sorted(runner.started) == sorted(heavy + light)


def test_cancel_a_queued_and_a_running_job(make_daemon):
    runner = FakeRunner()
    daemon = make_daemon(runner, light_jobs=1)
    first = daemon.call("job_submit", kind="selftest")["job"]["id"]
    second = daemon.call("job_submit", kind="selftest")["job"]["id"]
    assert daemon.call("job_cancel", id=second)["job"]["state"] == "cancelled"
    daemon.call("job_cancel", id=first)
    assert runner.started[first].terminated
    daemon.wait_job(first, "cancelled")
    assert second not in runner.started  # a cancelled queued job never starts


def test_a_chat_streams_from_the_fake_backend(make_daemon):
    daemon = make_daemon()
    reply = daemon.call("chat", prompt="hello there", chat_id="c1")
    assert reply["created"] is True and reply["topic"] == "chat.c1.token"
    assert daemon.call("chat", prompt="hello there", chat_id="c1")["created"] is False
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if any(data.get("event") == "done" for data in event_data(daemon, "chat.c1.")):
            break
        time.sleep(0.01)
    else:
        raise AssertionError("the chat never finished")


def test_chat_backends_are_told_whether_a_job_runs(make_daemon):
    class Backend:  # a backend that follows the load, as llama.cpp's does
        busy = None

    runner = FakeRunner()
    daemon = make_daemon(runner)
    backend, _ = daemon.server._following_load(lambda name: (Backend(), None))("tiny-test")
    assert backend.busy is not None and backend.busy() is False
    for kind in ("selftest-heavy", "selftest"):  # a light job needs a core too
        job = daemon.call("job_submit", kind=kind)["job"]["id"]
        daemon.wait_job(job, "running")
        assert backend.busy() is True
        runner.started[job].exit(0)
        daemon.wait_job(job, "succeeded")
        assert backend.busy() is False
