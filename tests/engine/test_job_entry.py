"""The one entry point of job processes: events, the error envelope, exit codes, no abbreviations."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import DataError, HyperlexError
from engine.job_entry import (
    EXIT_BAD_INPUT,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_STOPPED,
    Events,
    Finished,
    job_parser,
    run_job,
)

ROOT = Path(__file__).resolve().parents[2]
# Every job process the daemon starts (daemon/jobs.py), by module, with its required arguments.
JOB_MODULES = {"engine.training.run": ["--profile", "p"], "engine.evals.run": ["--profile", "p"],
               "engine.export.run": ["--adapter", "a"], "engine.scenes.run": ["--input", "i"],
               "engine.memory.run": ["--input", "i"], "daemon.selftest_job": ["--run-dir", "r"]}


class PickyError(HyperlexError):
    exit_code = 5


def counting_parser() -> argparse.ArgumentParser:
    parser = job_parser("python -m test.job", "A job for the tests.")
    parser.add_argument("--max-steps", type=int, default=2)
    return parser


def lines_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_work_events_and_the_done_event_are_json_lines_and_exit_0(capsys):
    def work(args, events: Events):
        events.log("starting")
        for step in range(args.max_steps):
            events.progress("count", step + 1, args.max_steps)
        return {"event": "done", "path": Path("/x/y")}

    assert run_job(counting_parser(), work, ["--max-steps", "3"]) == EXIT_OK
    events = lines_of(capsys.readouterr().out)
    assert events[0] == {"event": "log", "message": "starting"}
    assert [e["done"] for e in events if e["event"] == "progress"] == [1, 2, 3]
    assert events[1] == {"event": "progress", "stage": "count", "done": 1, "total": 3}
    assert events[-1] == {"event": "done", "path": "/x/y"}  # a Path is written as text


def test_a_hyperlex_error_is_the_envelope_its_exit_code_and_a_last_stderr_line(capsys):
    def work(args, events):
        events.log("reading")
        raise PickyError("scenes.jsonl has no scene", hint="give a file with scenes")

    assert run_job(counting_parser(), work, []) == 5
    out, err = capsys.readouterr()
    error = lines_of(out)[-1]
    assert error == {"event": "error", "type": "PickyError", "title": "hyperlex error",
                     "message": "scenes.jsonl has no scene", "hint": "give a file with scenes"}
    assert err.splitlines()[-2:] == ["error: scenes.jsonl has no scene",
                                     "  hint: give a file with scenes"]


def test_the_default_error_exit_code_is_1(capsys):
    def work(args, events):
        raise DataError("bad line")

    assert run_job(counting_parser(), work, []) == EXIT_ERROR == 1
    assert lines_of(capsys.readouterr().out)[-1]["type"] == "DataError"


def test_an_unexpected_exception_leaves_a_traceback_and_the_envelope(capsys):
    def work(args, events):
        return {"event": "done", "ratio": 1 / 0}

    assert run_job(counting_parser(), work, []) == EXIT_ERROR
    out, err = capsys.readouterr()
    events = lines_of(out)
    assert [e["event"] for e in events] == ["error"]
    assert events[0]["type"] == "ZeroDivisionError" and "division by zero" in events[0]["message"]
    assert events[0]["hint"] and "traceback" in events[0]["hint"]
    assert "Traceback (most recent call last)" in err and "1 / 0" in err
    assert err.rstrip().splitlines()[-1].startswith("error: unexpected ZeroDivisionError")


class SafetensorError(Exception):
    """What safetensors raises: not an OSError, only the OS error's text."""


@pytest.mark.parametrize("failure", [
    OSError(28, "No space left on device"),
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
])
def test_a_full_disk_is_named_without_a_traceback(capsys, failure):
    def work(args, events):
        try:
            raise failure
        except Exception as inner:
            raise RuntimeError("saving the adapter failed") from inner  # the cause is found

    assert run_job(counting_parser(), work, []) == EXIT_ERROR
    out, err = capsys.readouterr()
    event = lines_of(out)[0]
    assert event["type"] == "DiskFullError" and "No space left" in event["message"]
    assert "free some space" in event["hint"]
    assert "Traceback" not in err and "error: the disk is full (" in err


def test_finished_sets_the_exit_code_and_puts_its_note_after_the_done_event(capsys):
    def work(args, events):
        return Finished({"event": "done", "bad_lines": 1}, EXIT_BAD_INPUT, note="error: 1 bad")

    assert run_job(counting_parser(), work, []) == EXIT_BAD_INPUT == 2
    out, err = capsys.readouterr()
    assert lines_of(out) == [{"event": "done", "bad_lines": 1}]
    assert err.strip() == "error: 1 bad"


def test_finished_without_done_leaves_the_final_event_to_the_work(capsys):
    def work(args, events):
        events({"event": "checkpoint", "step": 1})
        return Finished(exit_code=EXIT_STOPPED)

    assert run_job(counting_parser(), work, []) == 143
    assert [e["event"] for e in lines_of(capsys.readouterr().out)] == ["checkpoint"]


def test_the_human_format_is_used_only_without_progress_jsonl(capsys):
    def work(args, events):
        return {"event": "done", "steps": args.max_steps}

    def human(event):
        return f"{event['event']}: {event['steps']} steps"

    assert run_job(counting_parser(), work, [], human=human) == EXIT_OK
    assert capsys.readouterr().out == "done: 2 steps\n"


def test_only_rank_0_prints_events(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")

    def work(args, events):
        events.log("from rank 1")
        raise DataError("bad")

    assert run_job(counting_parser(), work, []) == EXIT_ERROR
    out, err = capsys.readouterr()
    assert out == "" and "error: bad" not in err


def test_arguments_are_never_abbreviated(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_job(counting_parser(), lambda args, events: {"event": "done"}, ["--max", "3"])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "unrecognized arguments: --max" in err


@pytest.mark.parametrize("module", JOB_MODULES)
def test_every_job_process_uses_the_entry_point_and_refuses_abbreviations(module, capsys):
    parser = importlib.import_module(module).parser()
    required = JOB_MODULES[module]
    assert parser.parse_args([*required, "--progress-jsonl"]).progress_jsonl is True
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([*required, "--progress-json"])  # one letter short
    assert exit_.value.code == 2
    assert "unrecognized arguments: --progress-json" in capsys.readouterr().err


def test_stopped_exit_code_is_the_recipes():
    from engine.training.recipe import STOPPED_EXIT_CODE

    assert EXIT_STOPPED == STOPPED_EXIT_CODE


SCRIPT = """
import os, sys
from engine.job_entry import job_parser, run_job

def work(args, events):
    print("a stray print")
    os.write(1, b"a C library writing on fd 1\\n")
    events.log("working")
    return {"event": "done", "ok": True}

sys.exit(run_job(job_parser("job", "test"), work))
"""


def test_with_progress_jsonl_stdout_carries_only_events():
    process = subprocess.run([sys.executable, "-c", SCRIPT, "--progress-jsonl"], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                             text=True, timeout=60)
    assert process.returncode == 0, process.stderr
    assert lines_of(process.stdout) == [{"event": "log", "message": "working"},
                                        {"event": "done", "ok": True}]
    assert "a stray print" in process.stderr and "a C library writing on fd 1" in process.stderr
