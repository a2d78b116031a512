"""The persistent job queue: jobs in SQLite (WAL), their kinds, their rotated log files.

A job is written (and committed) before it is acknowledged, so a daemon killed at any moment
loses nothing that a client was told about. States:

    queued -> running -> succeeded | failed | cancelled | interrupted

A `request_id` chosen by the client is unique, so a retried `job_submit` returns the first job
instead of queuing a second one.

Each job kind declares its params (`Param`: type, help, path use): a client sets those and
nothing else; `profile`, `run_dir`, `resume` and whether a job is heavy are the daemon's.

This module knows nothing of sockets or of how processes are started (see daemon.workers).
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import HyperlexError

STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
FINAL_STATES = ("succeeded", "failed", "cancelled")
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    profile TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL,
    request_id TEXT UNIQUE,
    heavy INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    pid INTEGER,
    run_dir TEXT,
    checkpoint TEXT,
    resume INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    progress TEXT,
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
"""


class BusyError(HyperlexError):
    """The job queue is full."""

    title = "daemon busy"


class JobNotFoundError(HyperlexError):
    title = "no such job"


# --- job kinds ---------------------------------------------------------------------------------

# Flags the daemon sets on every job's command line itself; a client never chooses them.
DAEMON_FLAGS = ("profile", "run_dir", "resume")
# A JSON column that cannot be read (a row written by hand, a torn write) reads as
# `{UNREADABLE: <its text, cut short>}`, so listing the queue still works and the job shows why.
UNREADABLE = "unreadable_json"
PATH_USES = ("input", "output", "update")


@dataclass(frozen=True)
class Param:
    """One param a job kind accepts: it becomes `--name value` of the kind's entry point.

    Args:
        type: `str`, `int`, `float` or `bool` (a `store_true` flag); an int is taken for a
            float, and a number for a string (as its text); a bool is only a bool.
        help: what it does, for people.
        path: None, or how the job uses the path: `input` (read), `output` (a file or
            folder the job writes, which must not exist yet unless it lies in the run dir),
            `update` (read and written in place, e.g. a memory dir).
    """

    type: type
    help: str
    path: str | None = None


def _params(**params: Param) -> dict[str, Param]:
    for name, param in params.items():
        assert name not in DAEMON_FLAGS, f"{name} is the daemon's flag, never a param"
        assert param.type in (str, int, float, bool) and param.path in (None, *PATH_USES)
    return params


@dataclass(frozen=True)
class JobKind:
    """How to run one kind of job: the engine module, its command line and its params.

    `module` is run as `python -m module`; it must print the JSON-lines progress contract on
    stdout (`step`, `checkpoint`, `log`, `done` events) and checkpoint on SIGTERM. `params`
    is everything a client may set; a test checks each is a flag of the module's parser with
    the same type, so the two cannot drift apart.
    """

    name: str
    module: str
    heavy: bool
    argv: Callable[[dict[str, Any]], list[str]]
    params: dict[str, Param] = field(default_factory=dict)

    def available(self) -> bool:
        """Always true: every kind's module ships in the one package (a test checks each).

        Kept because `status` reports `job_kinds` as `{name: available}` for the front ends.
        """
        return True

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The params, checked against the kind's schema (ints given for floats become floats).

        Raises:
            BadRequest: an unknown key (the daemon's own flags included) or a wrong type.
        """
        from daemon.api import BadRequest  # the request layer's error; api imports no jobs

        allowed = ", ".join(sorted(self.params)) or "none"
        checked: dict[str, Any] = {}
        for key, value in params.items():
            param = self.params.get(key)
            if param is None:
                why = ("is set by the daemon" if key in DAEMON_FLAGS
                       else "is not a param of this kind")
                raise BadRequest(f"{self.name} job param {str(key)[:40]!r} {why}",
                                 hint=f"allowed params: {allowed}")
            if value is None:
                continue
            ok = isinstance(value, param.type) and (param.type is bool
                                                    or not isinstance(value, bool))
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if param.type is float and number:
                value, ok = float(value), True
            elif param.type is str and number:
                # The front ends read `tasks=1` or `base=7` as numbers; as a flag it is text.
                value, ok = str(value), True
            if not ok:
                raise BadRequest(f"{self.name} job param {key!r} must be a "
                                 f"{param.type.__name__}, not {type(value).__name__}",
                                 hint=f"{key}: {param.help}")
            checked[key] = value
        return checked

    def command(self, job: dict[str, Any], python: str = sys.executable) -> list[str]:
        """The full command line for `job` (its params, profile, run dir and resume flag).

        Only the schema's params become flags (a stored job from an older daemon may hold
        others): the daemon's `--run-dir` and `--resume` cannot be overridden.
        """
        stored = job["params"]
        if not isinstance(stored, dict) or UNREADABLE in stored:
            # Never run it with defaults in place of params that cannot be read.
            raise HyperlexError(f"job {job.get('id')}'s stored params are not a JSON object: "
                                f"{str(stored)[:80]}",
                                hint="submit the job again with the params it should have")
        params = {k: v for k, v in stored.items() if k in self.params}
        spec = dict(params, profile=job["profile"], run_dir=job["run_dir"],
                    resume=bool(job["resume"]))
        return [python, "-m", self.module, *self.argv(spec)]


def _flags(spec: dict[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    """`{"max_steps": 2, "resume": True}` -> `["--max-steps", "2", "--resume"]`."""
    out: list[str] = []
    for key, value in spec.items():
        if key in skip or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        # `--flag=value`: a value that starts with "-" stays a value, never another flag.
        out += [flag] if value is True else [f"{flag}={value}"]
    return out


def _recipe_argv(spec: dict[str, Any]) -> list[str]:
    base = [f"--profile={spec['profile']}", f"--run-dir={spec['run_dir']}"]
    return base + _flags(spec, skip=("profile", "run_dir")) + ["--progress-jsonl"]


TRAIN_PARAMS = _params(
    data=Param(str, "scenes JSONL (default: the synthetic demo corpus)", path="input"),
    mode=Param(str, "overrides training.mode"),
    max_steps=Param(int, "overrides training.max_steps"),
    stop_at_step=Param(int, "stop after this step with a checkpoint"),
)
EVAL_PARAMS = _params(
    adapter=Param(str, "[NAME=]DIR of PEFT adapters, comma-separated", path="input"),
    vs=Param(str, "the side to compare against (base)"),
    sweep=Param(str, "a run dir: every checkpoint", path="input"),
    tests=Param(str, "a manual test file (JSONL)", path="input"),
    backend=Param(str, "what scores the sides: hf, llamacpp or openai"),
    reverse_path=Param(str, "reversibility's way out: sceneformer or bridge"),
    judge=Param(str, "PROFILE[:BACKEND] of a pairwise judge"),
    ratings=Param(str, "people's A/B ratings (ab_ratings.jsonl) to rank", path="input"),
    data=Param(str, "scenes JSONL (default: the adapter's training data)", path="input"),
    mode=Param(str, "the held-out format (default: trained)"),
    tasks=Param(str, "comma-separated tasks to run"),
    limit=Param(int, "held-out examples at most"),
    seed=Param(int, "bootstrap seed"),
    n_resamples=Param(int, "bootstrap resamples"),
)
EXPORT_PARAMS = _params(
    adapter=Param(str, "PEFT adapter dir (or job:ID of a train job)", path="input"),
    format=Param(str, "gguf-lora, merge or gguf"),
    output=Param(str, "what to write (default: in the run dir)", path="output"),
    base=Param(str, "base model spec (default: the profile's)"),
)
SCENES_PARAMS = _params(
    input=Param(str, "a file or folder of texts", path="input"),
    output=Param(str, "scene JSONL to write (default: <run-dir>/scenes.jsonl)", path="output"),
    sceneformer=Param(str, "rule or llm"),
    registers=Param(str, "lexicon, embedding or none"),
    embed=Param(bool, "fill scene vectors"),
)
MEMORY_ADD_PARAMS = _params(
    input=Param(str, "scenes JSONL", path="input"),
    memory=Param(str, "memory dir (default: <state>/memory/default)", path="update"),
)
SELFTEST_PARAMS = _params(
    max_steps=Param(int, "steps to count"),
    step_time=Param(float, "seconds a step"),
    checkpoint_every=Param(int, "steps between checkpoints"),
    fail_at=Param(int, "exit 3 at this step"),
    ignore_sigterm=Param(bool, "keep running on SIGTERM (tests the SIGKILL escalation)"),
    lines_per_step=Param(int, "plain log lines printed each step"),
)

JOB_KINDS: dict[str, JobKind] = {
    kind.name: kind for kind in (
        JobKind("train", "engine.training.run", heavy=True, argv=_recipe_argv,
                params=TRAIN_PARAMS),
        JobKind("eval", "engine.evals.run", heavy=True, argv=_recipe_argv, params=EVAL_PARAMS),
        JobKind("export", "engine.export.run", heavy=True, argv=_recipe_argv,
                params=EXPORT_PARAMS),
        JobKind("scenes", "engine.scenes.run", heavy=False, argv=_recipe_argv,
                params=SCENES_PARAMS),
        JobKind("memory-add", "engine.memory.run", heavy=False, argv=_recipe_argv,
                params=MEMORY_ADD_PARAMS),
        # Exercises the job machinery itself (progress, checkpoints, resume, cancel); the
        # heavy one takes a heavy slot as a training does, so the limits can be tested.
        JobKind("selftest", "daemon.selftest_job", heavy=False, argv=_recipe_argv,
                params=SELFTEST_PARAMS),
        JobKind("selftest-heavy", "daemon.selftest_job", heavy=True, argv=_recipe_argv,
                params=SELFTEST_PARAMS),
    )
}


def job_kind(name: str) -> JobKind:
    try:
        return JOB_KINDS[name]
    except KeyError:
        raise HyperlexError(f"unknown job kind '{name}'",
                            hint=f"one of: {', '.join(sorted(JOB_KINDS))}") from None


# --- the store ---------------------------------------------------------------------------------

def _json_column(text: str) -> Any:
    """A JSON column's value; one that is not JSON reads as `{UNREADABLE: text}`.

    One such row must not make every `job_list` and `job_get` fail: it is shown as it is, and
    `JobKind.command` refuses to start a job whose params read that way.
    """
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return {UNREADABLE: str(text)[:200]}


def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    job = dict(row)
    for key in ("params", "progress", "result"):
        job[key] = _json_column(job[key]) if job[key] else ({} if key == "params" else None)
    job["resume"] = bool(job["resume"])
    job["heavy"] = bool(job["heavy"])
    return job


class CorruptJobStoreError(HyperlexError):
    """The job database cannot be read (not SQLite, or damaged)."""

    title = "corrupt job database"


class JobStore:
    """Jobs in SQLite with WAL. Used from the daemon's event loop thread only.

    Args:
        path: the database file (created when missing).
        jobs_dir: where job run dirs are made.
        recover: when the database is corrupt, move it (and its -wal and -shm files) aside as
            `<name>.corrupt-<time>` and start with an empty one; `moved_aside` then names the
            copy, for the daemon to log.

    Raises:
        CorruptJobStoreError: the database is corrupt and `recover` is off; it names the file
            and the way out.
    """

    def __init__(self, path: Path, jobs_dir: Path, recover: bool = False):
        self.path = path
        self.jobs_dir = jobs_dir
        self.moved_aside: Path | None = None
        jobs_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.db = self._open(path)
        except sqlite3.OperationalError as exc:
            # Locked, unreadable, disk full: the file may be fine, so it is never moved aside.
            raise HyperlexError(f"cannot open the job database {path}: {exc}",
                                hint="check the disk and the file's permissions") from None
        except sqlite3.DatabaseError as exc:
            if not recover:
                raise CorruptJobStoreError(
                    f"the job database {path} is corrupt ({exc})",
                    hint="start with `hyperlexd --recover` (or `hyperlex daemon start "
                         f"--recover`) to keep it aside as {path.name}.corrupt-<time> and "
                         "begin with an empty job queue, or restore it from a backup") from None
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            n = 1
            while aside.exists():  # a second recovery within the second keeps both copies
                n += 1
                aside = aside.with_name(f"{aside.name.split('~')[0]}~{n}")
            for suffix in ("", "-wal", "-shm"):
                part = path.with_name(path.name + suffix)
                if part.exists():
                    part.replace(aside.with_name(aside.name + suffix))
            self.moved_aside = aside
            self.db = self._open(path)
            # New ids start above the run dirs already there: a new job must never write into
            # (or resume from) a run dir of a job the lost database knew.
            taken = [int(p.name) for p in jobs_dir.iterdir() if p.name.isdigit()]
            if taken:
                self.db.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('jobs', ?)",
                                (max(taken),))

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a job acknowledged to a client survives power loss, not only a killed
            # daemon.
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            # A file with a good header but damaged pages opens fine and fails later, mid-run.
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(map(str, problems[:3])))
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        self.db.close()

    def submit(self, kind: str, profile: str, params: dict[str, Any],
               request_id: str | None, max_queue: int) -> tuple[dict[str, Any], bool]:
        """Queue a job; returns (job, created). A known `request_id` returns the first job.

        Raises:
            BusyError: `max_queue` jobs are already queued.
            BadRequest: a param outside the kind's schema (see `JobKind.check_params`).
        """
        if request_id:
            existing = self.db.execute("SELECT * FROM jobs WHERE request_id=?",
                                       (request_id,)).fetchone()
            if existing is not None:
                return _row(existing), False
        if self.count("queued") >= max_queue:
            raise BusyError(f"the job queue is full ({max_queue} queued)",
                            hint="wait for jobs to finish or cancel some")
        # Heavy is the kind's alone: a client cannot ask for two trainings at once.
        heavy = job_kind(kind).heavy
        params = job_kind(kind).check_params(params)
        # One transaction: a job whose run dir cannot be made (a full disk) is not left queued
        # without one, unknown to the client that was told the submit failed.
        self.db.execute("BEGIN IMMEDIATE")
        try:
            cursor = self.db.execute(
                "INSERT INTO jobs(kind, profile, params, state, request_id, heavy, created) "
                "VALUES (?,?,?,?,?,?,?)",
                (kind, profile, json.dumps(params), "queued", request_id, int(heavy),
                 time.time()))
            job_id = cursor.lastrowid
            run_dir = self.jobs_dir / str(job_id)
            run_dir.mkdir(parents=True, exist_ok=True)
            self.db.execute("UPDATE jobs SET run_dir=? WHERE id=?", (str(run_dir), job_id))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return self.get(job_id), True

    def get(self, job_id: int) -> dict[str, Any]:
        job = _row(self.db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())
        if job is None:
            raise JobNotFoundError(f"no job with id {job_id}")
        return job

    def list(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if state:
            rows = self.db.execute("SELECT * FROM jobs WHERE state=? ORDER BY id DESC LIMIT ?",
                                   (state, limit))
        else:
            rows = self.db.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
        return [_row(r) for r in rows]

    def count(self, state: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM jobs WHERE state=?", (state,)).fetchone()[0]

    def next_queued(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM jobs WHERE state='queued' ORDER BY id")
        return [_row(r) for r in rows]

    def update(self, job_id: int, **fields: Any) -> None:
        for key in ("progress", "result"):
            if key in fields and fields[key] is not None:
                fields[key] = json.dumps(fields[key])
        assignments = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE jobs SET {assignments} WHERE id=?", (*fields.values(), job_id))

    def mark_interrupted(self) -> list[dict[str, Any]]:
        """At start: every job still `running` belonged to a dead daemon. Returns them."""
        jobs = self.list("running", limit=10_000)
        self.db.execute("UPDATE jobs SET state='interrupted', finished=? WHERE state='running'",
                        (time.time(),))
        return jobs

    def requeue_for_resume(self) -> list[dict[str, Any]]:
        """Queue interrupted jobs that have a checkpoint again, with the resume flag."""
        resumed = []
        for job in self.list("interrupted", limit=10_000):
            if job["checkpoint"]:
                self.update(job["id"], state="queued", resume=1, finished=None, pid=None)
                resumed.append(self.get(job["id"]))
        return resumed


# --- logs ----------------------------------------------------------------------------------------

class JobLog:
    """A job's log file with size-based rotation (`log.txt`, `log.txt.1`, ...)."""

    def __init__(self, run_dir: Path, max_bytes: int = 1_000_000, backups: int = 3):
        self.path = Path(run_dir) / "log.txt"
        self.max_bytes = max_bytes
        self.backups = backups

    def append(self, line: str) -> None:
        self.append_many([line])

    def append_many(self, lines: Iterable[str]) -> None:
        """Append lines in one write (rotating first when the file is over its size)."""
        if self.path.exists() and self.path.stat().st_size > self.max_bytes:
            self._rotate()
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(line.rstrip("\n") + "\n" for line in lines))

    def _rotate(self) -> None:
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"log.txt.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"log.txt.{i + 1}"))
        self.path.replace(self.path.with_name("log.txt.1"))

    def read(self, offset: int = 0, limit: int = 200) -> dict[str, Any]:
        """A page of the retained lines, oldest first: `{lines, offset, next_offset, total}`."""
        files = [self.path.with_name(f"log.txt.{i}") for i in range(self.backups, 0, -1)]
        lines: list[str] = []
        for path in [*files, self.path]:
            if path.exists():
                lines += path.read_text(encoding="utf-8", errors="replace").splitlines()
        page = lines[offset: offset + limit]
        return {"lines": page, "offset": offset, "next_offset": offset + len(page),
                "total": len(lines)}
