"""No job can poison, wedge or escape the daemon: a job that cannot start fails alone, a job's
output cannot kill its reader, a final state that cannot be saved is retried, params are the
kind's typed schema (no abbreviations, no daemon flags, paths inside the roots for remote
clients, outputs that overwrite nothing), heavy is the kind's, and job_resume respects the queue.

In-process (fake runner, real SQLite and ipc) where that shows it; real daemons for restarts and
TCP clients; a real job process for the reader.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import queue
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon.client import DaemonError
from daemon.connection import read_connection_file
from daemon.jobs import FINAL_STATES, JOB_KINDS, JobStore
from daemon.scheduler import JobScheduler
from daemon.workers import JobProcess
from engine.paths import dirs
from tests.daemon.fakes import FakeRunner, free_port_pair


def error_of(reply: dict) -> dict:
    assert "error" in reply, f"expected an error, got {reply}"
    return reply["error"]


class RaisingRunner(FakeRunner):
    """Starting the jobs in `bad` raises, as Popen does on a NUL byte in an argument."""

    def __init__(self, bad: set[int]):
        super().__init__()
        self.bad = bad

    def __call__(self, job_id, argv, run_dir, post):
        if job_id in self.bad:
            raise ValueError("embedded null byte")
        return super().__call__(job_id, argv, run_dir, post)


# --- 1. one bad job fails alone ----------------------------------------------------------------

def test_a_job_that_cannot_start_fails_alone_and_later_jobs_still_run(make_daemon):
    runner = RaisingRunner(bad={2})
    daemon = make_daemon(runner)
    replies = [daemon.call("job_submit", kind="selftest") for _ in range(3)]
    ids = [reply["job"]["id"] for reply in replies]
    assert ids == [1, 2, 3], replies
    bad = daemon.wait_job(2, "failed")
    assert "could not start: ValueError: embedded null byte" in bad["error"]
    assert daemon.wait_job(1, "running") and daemon.wait_job(3, "running")
    assert sorted(runner.started) == [1, 3]
    log = (Path(bad["run_dir"]) / "log.txt").read_text()
    assert "[daemon] failed: could not start: ValueError: embedded null byte" in log
    assert daemon.call("status")["pid"] == os.getpid()  # still serving


def test_a_queued_job_whose_run_dir_was_deleted_gets_a_new_one(make_daemon):
    daemon = make_daemon(light_jobs=0)
    job = daemon.call("job_submit", kind="selftest")["job"]
    run_dir = Path(job["run_dir"])
    (run_dir / "log.txt").unlink()
    run_dir.rmdir()
    daemon.server.on_loop(lambda: setattr(daemon.server.scheduler, "light_jobs", 1))
    daemon.call("job_submit", kind="selftest")  # a submit runs the scheduler
    daemon.wait_job(job["id"], "running")
    assert "[daemon] start:" in (run_dir / "log.txt").read_text()


def _start_daemon(start_daemon, **env: str):
    return start_daemon(env={f"HYPERLEX_DAEMON_{k.upper()}": v for k, v in env.items()})


def test_a_restart_after_a_poisoned_job_and_a_deleted_run_dir_serves(start_daemon):
    daemon = _start_daemon(start_daemon, light_jobs="0")  # nothing starts: all stay queued
    with daemon.client() as client:
        ids = [client.job_submit("selftest", {"max_steps": 2, "step_time": 0.01})["job"]["id"]
               for _ in range(3)]
    daemon.stop()
    home = dirs()
    # Job 1 loses its run dir; job 2's stored params would put a NUL byte on its command line
    # (what an older daemon let in), which Popen refuses with ValueError.
    run_dir = home.state / "jobs" / str(ids[0])
    for path in run_dir.iterdir():
        path.unlink()
    run_dir.rmdir()
    db = sqlite3.connect(home.state / "jobs.sqlite3")
    db.execute("UPDATE jobs SET params=? WHERE id=?",
               (json.dumps({"max_steps": 2, "fail_at": "a\u0000b"}), ids[1]))
    db.commit()
    db.close()

    again = start_daemon()
    with again.client() as client:
        deadline = time.monotonic() + 60
        states = {}
        while time.monotonic() < deadline:
            states = {i: client.job_get(i)["job"] for i in ids}
            if all(job["state"] in FINAL_STATES for job in states.values()):
                break
            time.sleep(0.1)
        assert states[ids[0]]["state"] == "succeeded", states[ids[0]]
        assert states[ids[1]]["state"] == "failed"
        assert "embedded null byte" in states[ids[1]]["error"]
        assert states[ids[2]]["state"] == "succeeded"
        assert client.status()["pid"] == again.pid
    output = again.output()
    assert f"job {ids[1]} (selftest) could not start, marked failed" in output
    assert f"job {ids[0]}: its run dir {run_dir} was missing, made it again" in output


def test_a_restart_after_kill9_with_a_running_jobs_run_dir_deleted_serves(start_daemon):
    daemon = start_daemon()
    with daemon.client() as client:
        # No checkpoint: after the restart it stays interrupted rather than resuming.
        job = client.job_submit("selftest", {"max_steps": 100_000, "step_time": 0.05,
                                             "checkpoint_every": 10**9})["job"]
        while client.job_get(job["id"])["job"]["state"] != "running":
            time.sleep(0.05)
    daemon.kill9()
    run_dir = Path(job["run_dir"])
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    again = start_daemon()
    with again.client() as client:
        assert client.job_get(job["id"])["job"]["state"] == "interrupted"
        assert client.status()["pid"] == again.pid
    assert f"job {job['id']} was running when the daemon died: interrupted" in again.output()


# --- 2. a job's output cannot kill its reader ---------------------------------------------------

def test_deeply_nested_json_on_stdout_still_ends_the_job(tmp_path):
    script = ("import json, sys\n"
              "print('{\"event\": \"step\", \"deep\": ' + '[' * 100000, flush=True)\n"
              "print(json.dumps({'event': 'done', 'ok': True}), flush=True)\n")
    posted: queue.Queue = queue.Queue()
    JobProcess(7, [sys.executable, "-c", script], tmp_path, posted.put)
    items = []
    while True:
        item = posted.get(timeout=30)  # the exit must come: without it the job runs forever
        items.append(item)
        if item[0] == "exit":
            break
    assert items[-1] == ("exit", 7, 0)
    lines = [payload for kind, _, payload in items if kind == "line"]
    assert any(line.startswith('{"event": "step", "deep": [[[') and "characters)" in line
               and len(line) < 3000 for line in lines), lines
    assert ("event", 7, {"event": "done", "ok": True}) in items  # later lines still read


def test_a_job_line_without_end_is_read_in_bounded_memory(tmp_path):
    # Before, the reader held the whole line (and its decoded copy): 2 x 64 MiB here.
    import tracemalloc

    script = ("import json, sys\n"
              "sys.stdout.write('{\"event\": \"step\", \"x\": \"' + 'y' * (64 << 20))\n"
              "sys.stdout.write('\\n'); sys.stdout.flush()\n"
              "print(json.dumps({'event': 'done', 'ok': True}), flush=True)\n")
    posted: queue.Queue = queue.Queue()
    tracemalloc.start()
    try:
        JobProcess(8, [sys.executable, "-c", script], tmp_path, posted.put)
        items = []
        while not items or items[-1][0] != "exit":
            items.append(posted.get(timeout=60))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert items[-1] == ("exit", 8, 0)
    lines = [payload for kind, _, payload in items if kind == "line"]
    assert len(lines) == 1 and lines[0].endswith(f"... ({(64 << 20) + 24} characters)")
    assert ("event", 8, {"event": "done", "ok": True}) in items  # the next line is whole
    assert peak < 48 * 2**20, f"the reader held {peak / 2**20:.0f} MiB"


# --- 3. final states that cannot be saved are retried -------------------------------------------

class FullDiskStore(JobStore):
    """A store whose final-state updates fail `failures` times, as on a full disk."""

    failures = 0

    def update(self, job_id, **fields):
        if fields.get("state") in FINAL_STATES and self.failures > 0:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        super().update(job_id, **fields)


def test_a_final_state_that_cannot_be_saved_is_retried_until_it_is(tmp_path, caplog):
    store = FullDiskStore(tmp_path / "jobs.sqlite3", tmp_path / "jobs")
    runner = FakeRunner()
    events: list = []
    scheduler = None

    def post(item: tuple) -> None:
        scheduler.on_item(*item)

    scheduler = JobScheduler(store, lambda t, d: events.append((t, d)), post, light_jobs=1,
                             runner=runner)
    first = store.submit("selftest", "tiny-test", {}, None, 64)[0]["id"]
    second = store.submit("selftest", "tiny-test", {}, None, 64)[0]["id"]
    scheduler.schedule()
    store.failures = 3
    runner.started[first].exit(0)  # failure 1
    assert store.get(first)["state"] == "running", "not saved yet"
    assert first not in scheduler.running and second in scheduler.running  # the queue moves
    reply = scheduler.cancel(first)  # failure 2: answered truthfully
    assert reply["state"] == "succeeded" and reply["saved"] is False
    scheduler.check_timers()  # failure 3
    assert store.get(first)["state"] == "running"
    scheduler.check_timers()  # the disk has room again
    assert store.get(first)["state"] == "succeeded" and not scheduler.pending_exits
    assert ("job.1.progress", {"event": "state", "state": "succeeded", "exit_code": 0}) in events
    assert scheduler.cancel(first)["state"] == "succeeded"
    said = [r.getMessage() for r in caplog.records if "could not be saved" in r.getMessage()]
    assert len(said) == 1, said  # logged once, not once a tick
    assert "database or disk is full" in said[0]
    store.close()


def test_a_job_that_cannot_start_for_a_full_disk_waits_queued(tmp_path):
    import errno

    store = JobStore(tmp_path / "jobs.sqlite3", tmp_path / "jobs")
    runner = RaisingRunner(bad={1})
    runner_call = runner.__call__

    def full_disk(job_id, argv, run_dir, post):
        if job_id in runner.bad:
            raise OSError(errno.ENOSPC, "No space left on device")
        return runner_call(job_id, argv, run_dir, post)

    scheduler = JobScheduler(store, lambda t, d: None, lambda item: None, runner=full_disk)
    job = store.submit("selftest", "tiny-test", {}, None, 64)[0]["id"]
    scheduler.schedule()
    assert store.get(job)["state"] == "queued" and not runner.started
    runner.bad.clear()  # space again
    scheduler.schedule()
    assert store.get(job)["state"] == "running" and list(runner.started) == [job]
    store.close()


def test_a_full_tmpfs_under_a_finishing_job_then_freed(start_daemon, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    state = dirs().state
    state.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount is not permitted here: {mounted.stderr.strip()}")
    try:
        daemon = start_daemon()
        with daemon.client() as client:
            job = client.job_submit("selftest", {"max_steps": 60, "step_time": 0.05})["job"]
            filler = state / "filler"
            with open(filler, "wb") as f:  # fill the disk while the job runs
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            deadline = time.monotonic() + 30
            while "succeeded" not in daemon.output() and "could not be saved" not in \
                    daemon.output() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert client.status()["pid"] == daemon.pid  # serving with the disk full
            filler.unlink()
            deadline = time.monotonic() + 30
            while client.job_get(job["id"])["job"]["state"] == "running":
                assert time.monotonic() < deadline, "the job stayed running after space freed"
                time.sleep(0.2)
            assert client.job_get(job["id"])["job"]["state"] in FINAL_STATES
            assert client.status()["pid"] == daemon.pid
        # The full disk is said once per job, not with a traceback for every event.
        assert daemon.output().count("Traceback") == 0, daemon.output()[-3000:]
        daemon.stop()
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


# --- 4. params are the kind's schema ------------------------------------------------------------

MODULE_PARSERS = {"engine.training.run": "parser", "engine.evals.run": "parser",
                  "engine.export.run": "parser", "engine.scenes.run": "parser",
                  "engine.memory.run": "parser", "daemon.selftest_job": "parser"}
REQUIRED = {"export": {"adapter": "a"}, "scenes": {"input": "i"}, "memory-add": {"input": "i"}}


def _parser(kind) -> argparse.ArgumentParser:
    return getattr(importlib.import_module(kind.module), MODULE_PARSERS[kind.module])()


@pytest.mark.parametrize("name", sorted(JOB_KINDS))
def test_every_param_of_a_kind_is_a_flag_of_its_entry_point_of_the_same_type(name):
    kind = JOB_KINDS[name]
    parser = _parser(kind)
    assert parser.allow_abbrev is False
    actions = {option: action for action in parser._actions for option in action.option_strings}
    for param_name, param in kind.params.items():
        action = actions.get("--" + param_name.replace("_", "-"))
        assert action is not None, f"{name}: {param_name} is not a flag of {kind.module}"
        if param.type is bool:
            assert isinstance(action, argparse._StoreTrueAction), (name, param_name)
        elif param.type in (int, float):
            assert action.type is param.type, (name, param_name, action.type)
        else:
            assert action.type in (None, str, Path) and action.nargs is None, (name, param_name)
    for flag in ("--profile", "--run-dir", "--resume"):
        assert flag in actions, f"{name}: the daemon's {flag} is not a flag of {kind.module}"


@pytest.mark.parametrize("name", sorted(JOB_KINDS))
def test_an_abbreviated_flag_is_an_error_in_every_entry_point(name, capsys):
    kind = JOB_KINDS[name]
    job = {"params": REQUIRED.get(name, {}), "profile": "p", "run_dir": "/r", "resume": False}
    argv = kind.command(job)[3:]
    _parser(kind).parse_args(argv)  # the daemon's own command line parses
    for abbreviated in (["--run", "/tmp/x"], ["--resum"]):
        with pytest.raises(SystemExit) as exited:
            _parser(kind).parse_args([*argv, *abbreviated])
        assert exited.value.code == 2
    assert "unrecognized arguments: --resum" in capsys.readouterr().err


@pytest.mark.parametrize(("kind", "params", "message"), [
    ("train", {"run": "/tmp/x"}, "train job param 'run' is not a param of this kind"),
    ("selftest", {"resum": True}, "selftest job param 'resum' is not a param of this kind"),
    ("selftest", {"resume": True}, "selftest job param 'resume' is set by the daemon"),
    ("train", {"run_dir": "/tmp/x"}, "train job param 'run_dir' is set by the daemon"),
    ("selftest", {"heavy": True}, "selftest job param 'heavy' is not a param of this kind"),
    ("selftest", {"max_steps": "5"}, "'max_steps' must be a int, not str"),
    ("selftest", {"max_steps": True}, "'max_steps' must be a int, not bool"),
    ("scenes", {"input": True}, "'input' must be a str, not bool"),
])
def test_params_outside_the_schema_are_refused_at_submit(make_daemon, kind, params, message):
    daemon = make_daemon()
    error = error_of(daemon.call("job_submit", kind=kind, params=params))
    assert error["type"] == "BadRequest" and message in error["message"], error
    if "not a param" in message:
        assert "allowed params:" in error["hint"] and "max_steps" in error["hint"]
    assert daemon.call("job_list")["jobs"] == []  # nothing was queued


def test_a_float_param_takes_an_int_and_a_string_param_a_number(make_daemon):
    daemon = make_daemon()
    job = daemon.call("job_submit", kind="selftest", params={"step_time": 1})["job"]
    assert job["params"] == {"step_time": 1.0}
    job = daemon.call("job_submit", kind="train", params={"mode": 3})["job"]
    assert job["params"] == {"mode": "3"}


def test_an_output_never_overwrites_an_existing_file_outside_the_run_dir(make_daemon, tmp_path):
    daemon = make_daemon()
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    error = error_of(daemon.call("job_submit", kind="export",
                                 params={"adapter": str(tmp_path), "output": str(precious)}))
    assert error["type"] == "BadRequest"
    assert f"'output': {precious} exists already" in error["message"]
    # A new path, or one in the run dir (relative), is fine.
    for output in (str(tmp_path / "new.gguf"), "adapter.gguf"):
        assert daemon.call("job_submit", kind="export",
                           params={"adapter": str(tmp_path), "output": output})["created"]
    assert precious.read_text() == "keep me"


def test_a_local_client_may_name_any_input(make_daemon, tmp_path):
    daemon = make_daemon()
    outside = tmp_path / "outside.txt"
    outside.write_text("text")
    assert daemon.call("job_submit", kind="scenes", params={"input": str(outside)})["created"]


def test_a_remote_client_paths_must_resolve_under_the_roots(start_daemon, tmp_path):
    daemon = start_daemon("--bind", f"tcp://127.0.0.1:{free_port_pair()}",
                          env={"HYPERLEX_DAEMON_LIGHT_JOBS": "0"})  # nothing runs
    state = dirs().state.resolve()
    outside = tmp_path / "secret.txt"
    outside.write_text("not for remote eyes")
    inside = state / "texts" / "scene.txt"
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.write_text("a scene")
    link = state / "texts" / "link.txt"
    link.symlink_to(outside)
    with daemon.client() as client:
        assert read_connection_file().request.startswith("tcp://")
        with pytest.raises(DaemonError) as refused:
            client.job_submit("scenes", {"input": str(outside)})
        assert refused.value.type == "BadRequest"
        assert f"'input': {outside.resolve()} is outside the paths a remote client may use" \
            in refused.value.message and str(state) in refused.value.message
        with pytest.raises(DaemonError, match="outside the paths") as via_link:
            client.job_submit("scenes", {"input": str(link)})
        assert str(outside.resolve()) in via_link.value.message
        with pytest.raises(DaemonError, match="outside the paths"):
            client.job_submit("scenes", {"input": "../../../../../../../../etc/passwd"})
        with pytest.raises(DaemonError, match="'profile': .* is outside the paths"):
            client.job_submit("scenes", {"input": str(inside)}, profile=str(outside))
        assert client.job_submit("scenes", {"input": str(inside)})["created"]
        assert client.job_submit("scenes", {"input": "scene.txt"})["created"]  # the run dir's


def test_a_profiles_path_roots_are_the_roots_a_remote_client_may_use(start_daemon, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "poems.txt").write_text("a poem")
    profile = tmp_path / "roots.toml"
    profile.write_text(f'name = "roots"\nextends = "tiny-test"\n[daemon]\n'
                       f'path_roots = ["{corpus}"]\n')
    daemon = start_daemon("--profile", str(profile), "--bind",
                          f"tcp://127.0.0.1:{free_port_pair()}",
                          env={"HYPERLEX_DAEMON_LIGHT_JOBS": "0"})
    state_file = dirs().state / "texts.txt"
    state_file.write_text("in the state dir, not a root now")
    with daemon.client() as client:
        # The daemon's own profile is a path outside the roots: the operator's, not checked.
        assert client.job_submit("scenes", {"input": str(corpus / "poems.txt")})["created"]
        with pytest.raises(DaemonError, match=f"outside the paths .*{corpus}"):
            client.job_submit("scenes", {"input": str(state_file)})
        with pytest.raises(DaemonError, match="the request's field 'profile'"):
            client.job_submit("scenes", {"input": str(corpus / "poems.txt")},
                              profile=str(profile))


def test_a_remote_clients_chat_adapter_must_lie_under_the_roots(start_daemon, tmp_path):
    # Before, a remote chat could name any dir as its adapter: the daemon loaded it, and
    # "does not exist" against any other answer told the client which paths exist.
    daemon = start_daemon("--bind", f"tcp://127.0.0.1:{free_port_pair()}",
                          env={"HYPERLEX_DAEMON_LIGHT_JOBS": "0"})
    outside = tmp_path / "peft-adapter"
    outside.mkdir()
    state = dirs().state.resolve()
    link = state / "adapter-link"
    link.symlink_to(outside)
    with daemon.client() as client:
        for spec in (str(outside), str(tmp_path / "missing"), str(link), "/etc"):
            with pytest.raises(DaemonError, match="is outside the paths a remote client") \
                    as refused:
                client.chat("hi", adapter=spec, max_tokens=1)
            assert refused.value.type == "BadRequest" and "does not exist" not in \
                refused.value.message
        with pytest.raises(DaemonError, match="does not exist"):  # inside: the usual answer
            client.chat("hi", adapter=str(state / "no-such-adapter"), max_tokens=1)


# --- 7. caps are the daemon's -------------------------------------------------------------------

def test_two_heavy_jobs_never_run_at_once_whatever_the_client_asks(make_daemon):
    runner = FakeRunner()
    daemon = make_daemon(runner, heavy_jobs=1, light_jobs=4)
    heavy = [daemon.call("job_submit", kind="selftest-heavy")["job"] for _ in range(2)]
    assert all(job["heavy"] for job in heavy)
    assert error_of(daemon.call("job_submit", kind="selftest",
                                params={"heavy": True}))["type"] == "BadRequest"
    assert error_of(daemon.call("job_submit", kind="train",
                                params={"heavy": False}))["type"] == "BadRequest"
    assert sorted(runner.started) == [heavy[0]["id"]]
    assert daemon.call("job_get", id=heavy[1]["id"])["job"]["state"] == "queued"


def test_job_resume_on_a_full_queue_answers_busy(make_daemon):
    runner = FakeRunner()
    daemon = make_daemon(runner, max_queue=1, light_jobs=1)
    first = daemon.call("job_submit", kind="selftest")["job"]["id"]
    daemon.call("job_submit", kind="selftest")  # queued behind it
    runner.started[first].exit(3)
    daemon.wait_job(first, "failed")
    daemon.call("job_submit", kind="selftest")  # the queue is full again
    error = error_of(daemon.call("job_resume", id=first, restart=True))
    assert error["type"] == "BusyError" and "1 queued" in error["message"]
    assert daemon.call("job_get", id=first)["job"]["state"] == "failed"
