"""`hyperlex jobs ...` through the real CLI against a real hyperlexd over its ZeroMQ sockets.

One daemon serves the module (its home is each test's HYPERLEX_HOME); the jobs are `selftest`
jobs of a few hundredths of a second a step. The tests that need no daemon use a home without
one.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from click.testing import CliRunner

from daemon.selftest_job import loss_at
from engine.errors import ConfigError
from hyperlex_console.cli import main
from hyperlex_console.cli.jobs import parse_params
from tests.daemon.conftest import DaemonProcess

QUICK = ("--param", "max_steps=3", "--param", "step_time=0.01")


def hyperlex(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def hyperlex_json(*args: str) -> tuple[int, object]:
    code, out, err = hyperlex(*args, "--json")
    assert out.strip(), err
    return code, json.loads(out)


@pytest.fixture(scope="module")
def module_daemon(tmp_path_factory):
    daemon = DaemonProcess(home=tmp_path_factory.mktemp("jobs-daemon")).wait_ready()
    yield daemon
    daemon.stop()


@pytest.fixture
def daemon(module_daemon, monkeypatch):
    """The module's daemon, found the way a person's CLI finds it: through HYPERLEX_HOME."""
    monkeypatch.setenv("HYPERLEX_HOME", str(module_daemon.home))
    return module_daemon


def test_params_parse_as_json_or_strings():
    params = parse_params(("max-steps=20", "lr=1e-3", "resume=true", "data=runs/a b.jsonl",
                           "layers=[1, 2]", "name=\"7\"", "empty="))
    assert params == {"max_steps": 20, "lr": 1e-3, "resume": True, "data": "runs/a b.jsonl",
                      "layers": [1, 2], "name": "7", "empty": ""}
    with pytest.raises(ConfigError) as error:
        parse_params(("max_steps", "=3", "ok=1"))
    assert "'max_steps' is not KEY=VALUE" in error.value.message
    assert "'=3' is not KEY=VALUE" in error.value.message


def test_bad_param_is_refused_before_any_daemon_is_asked():
    code, _, err = hyperlex("jobs", "submit", "selftest", "--param", "max_steps")
    assert code == 1 and "'max_steps' is not KEY=VALUE" in err and "hint:" in err


def test_submit_list_show_logs(daemon):
    code, reply = hyperlex_json("jobs", "submit", "selftest", *QUICK)
    assert code == 0 and reply["created"] and reply["job"]["kind"] == "selftest"
    job_id = reply["job"]["id"]
    assert daemon.client().wait_job(job_id, timeout=30)["state"] == "succeeded"

    code, listing = hyperlex_json("jobs", "list")
    assert code == 0 and job_id in [job["id"] for job in listing["jobs"]]
    code, failed = hyperlex_json("jobs", "list", "--state", "failed")
    assert code == 0 and job_id not in [job["id"] for job in failed["jobs"]]
    code, out, _ = hyperlex("jobs", "list")
    assert code == 0 and "selftest" in out and "succeeded" in out

    code, shown = hyperlex_json("jobs", "show", str(job_id))
    assert code == 0 and shown["job"]["state"] == "succeeded"
    assert shown["job"]["result"]["final_loss"] == loss_at(3)
    code, out, _ = hyperlex("jobs", "show", str(job_id))
    assert code == 0 and f"hyperlex jobs logs {job_id}" in out and "final_loss" in out

    code, logs = hyperlex_json("jobs", "logs", str(job_id))
    assert code == 0 and logs["lines"][-1].endswith("succeeded (exit code 0)")
    assert logs["total"] == len(logs["lines"]) >= 4
    code, out, _ = hyperlex("jobs", "logs", str(job_id), "-n", "1")
    assert code == 0 and out.splitlines() == [logs["lines"][-1]]


def test_unknown_kind_and_unknown_id_exit_non_zero_with_a_hint(daemon):
    code, _, err = hyperlex("jobs", "submit", "no-such-kind")
    assert code == 1 and "unknown job kind 'no-such-kind'" in err and "selftest" in err
    code, reply = hyperlex_json("jobs", "show", "9999")
    assert code == 1 and reply["error"]["message"] == "no job with id 9999"
    assert "hyperlex jobs list" in reply["error"]["hint"]
    for command in ("logs", "cancel", "resume"):
        code, _, err = hyperlex("jobs", command, "9999")
        assert code == 1 and "no job with id 9999" in err, command


def test_submit_wait_follows_to_the_end(daemon):
    code, out, err = hyperlex("jobs", "submit", "selftest", "--param", "max_steps=6",
                              "--param", "step_time=0.02", "--wait")
    assert code == 0, err
    assert "succeeded" in out and f"final_loss={loss_at(6)}" in out
    # Not a terminal: plain progress lines on stderr, the step count reaching the end.
    assert "step 6/6" in err and err.rstrip().endswith("succeeded")

    code, reply = hyperlex_json("jobs", "submit", "selftest", *QUICK, "--wait")
    assert code == 0 and reply["job"]["state"] == "succeeded" and "error" not in reply


def test_submit_wait_of_a_failing_job_exits_non_zero(daemon):
    code, reply = hyperlex_json("jobs", "submit", "selftest", "--param", "max_steps=5",
                                "--param", "step_time=0.01", "--param", "fail_at=2", "--wait")
    assert code == 1
    assert reply["job"]["state"] == "failed" and "exit code 3" in reply["job"]["error"]
    assert reply["error"]["type"] == "JobFailedError"


def test_logs_follow_returns_when_the_job_ends(daemon):
    code, reply = hyperlex_json("jobs", "submit", "selftest", "--param", "max_steps=20",
                                "--param", "step_time=0.05", "--param", "lines_per_step=1")
    job_id = str(reply["job"]["id"])
    started = time.monotonic()
    code, out, err = hyperlex("jobs", "logs", job_id, "--follow")
    assert code == 0, err
    assert time.monotonic() - started < 20
    lines = out.splitlines()
    assert lines[-1].endswith("succeeded (exit code 0)")
    assert sum("selftest step" in line for line in lines) == 20  # each line once, none lost

    code, out, err = hyperlex("jobs", "logs", job_id, "-f", "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and records[-1]["job"]["state"] == "succeeded"
    assert [r["index"] for r in records[:-1]] == list(range(len(lines)))


def test_cancel_then_resume_from_the_checkpoint(daemon):
    code, reply = hyperlex_json("jobs", "submit", "selftest", "--param", "max_steps=60",
                                "--param", "step_time=0.05")
    job_id = reply["job"]["id"]
    with daemon.client() as client:
        deadline = time.monotonic() + 20
        while not client.job_get(job_id)["job"]["checkpoint"]:
            assert time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.05)
        code, out, _ = hyperlex("jobs", "cancel", str(job_id))
        assert code == 0 and "cancelling" in out
        assert client.wait_job(job_id, timeout=20)["state"] == "cancelled"
    code, out, _ = hyperlex("jobs", "cancel", str(job_id))
    assert code == 0 and "already cancelled" in out

    code, reply = hyperlex_json("jobs", "resume", str(job_id), "--wait")
    assert code == 0 and reply["resume"] is True
    assert reply["job"]["state"] == "succeeded" and reply["job"]["result"]["final_loss"] \
        == loss_at(60)
    code, logs = hyperlex_json("jobs", "logs", str(job_id))
    assert any("resume=True" in line for line in logs["lines"])

    code, _, err = hyperlex("jobs", "resume", str(job_id))
    assert code == 1 and "only failed, cancelled, interrupted jobs" in err
    code, _, err = hyperlex("jobs", "cancel", str(job_id))
    assert code == 1 and "already succeeded" in err


def test_resume_without_a_checkpoint_needs_restart(daemon):
    code, reply = hyperlex_json("jobs", "submit", "selftest", "--param", "max_steps=3",
                                "--param", "fail_at=1", "--param", "step_time=0.01", "--wait")
    job_id = str(reply["job"]["id"])
    code, _, err = hyperlex("jobs", "resume", job_id)
    assert code == 1 and "no checkpoint" in err and f"jobs resume {job_id} --restart" in err
    code, out, _ = hyperlex("jobs", "resume", job_id, "--restart")
    assert code == 0 and "starting over" in out


def test_connect_file_reaches_a_daemon_of_another_home(module_daemon, tmp_path):
    code, listing = hyperlex_json("jobs", "list", "--connect", str(module_daemon.connection_file))
    assert code == 0 and isinstance(listing["jobs"], list)
    code, _, err = hyperlex("jobs", "list", "--connect", str(tmp_path / "nope.json"))
    assert code == 1 and "no such connection file" in err


def test_list_says_no_daemon_runs_and_submit_starts_one():
    code, _, err = hyperlex("jobs", "list")
    assert code == 1 and "hyperlexd is not running" in err and "hyperlex daemon start" in err
    code, reply = hyperlex_json("jobs", "show", "1")
    assert code == 1 and reply["error"]["message"] == "hyperlexd is not running"

    code, out, err = hyperlex("jobs", "submit", "selftest", *QUICK, "--wait")
    try:
        assert code == 0, err
        assert "no hyperlexd was running: started one" in err and "succeeded" in out
        code, listing = hyperlex_json("jobs", "list")
        assert code == 0 and len(listing["jobs"]) == 1
    finally:
        code, out, _ = hyperlex("daemon", "stop")
        if code != 0 or "stopped" not in out:
            pid = int(err.split("started one (pid ")[1].split(")")[0])
            os.kill(pid, signal.SIGKILL)


def test_the_progress_bar_follows_a_job_to_its_end(daemon):
    """The terminal form of --wait (a rich bar), driven directly: it must see the same end."""
    from hyperlex_console.cli.job_follow import follow_job

    with daemon.client() as client:
        job = client.job_submit("selftest", {"max_steps": 8, "step_time": 0.02})["job"]
        with client.events(f"job.{job['id']}.") as stream:
            done = follow_job(client, job["id"], stream, bar=True)
    assert done["state"] == "succeeded" and done["result"]["final_loss"] == loss_at(8)
