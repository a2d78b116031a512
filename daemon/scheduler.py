"""The job scheduler: which queued jobs start, their processes' events and exits, cancel, resume
after a crash, and the stop that lets running jobs checkpoint.

At most `heavy_jobs` heavy jobs (training, GPU) and `light_jobs` light ones run at once. A job
process is made by `runner(job_id, argv, run_dir, post)` (daemon.workers.JobProcess by default;
tests inject a fake): its reader threads `post` `("event"|"line"|"exit", job_id, payload)` items
to the daemon's inbox, and the loop thread hands them back here.

No one job can stop the others: a job that cannot start (any exception) is `failed` with the
cause, alone; one that cannot start for a full disk stays queued. A job's final state that the
store refuses (a full disk) is kept in `pending_exits` and retried on the loop's timer until it
is saved; progress and log writes that fail are said once per job and never block the state.

Everything here runs on the daemon's loop thread, which owns the job store, `running` and
`job_counts`. The one exception is reading: `job_counts` is replaced whole (never mutated) and
`job_pids()` copies `running`, so the status request may read both from a worker thread.
This module knows nothing of sockets or requests.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from daemon.events import STATUS_TOPIC
from daemon.jobs import FINAL_STATES, JobLog, JobStore, job_kind
from daemon.workers import JobProcess, Post, kill_leftover_group
from engine.errors import HyperlexError, disk_full

log = logging.getLogger("hyperlexd")
Publish = Callable[[str, dict[str, Any]], None]
# While jobs are queued and a slot is free, the loop's timer looks at the queue this often: a
# job that could not start for want of disk space starts once the space is back, even when no
# submit or exit comes to wake the scheduler.
START_RETRY_S = 1.0


class Process(Protocol):
    """What the scheduler needs of a running job (daemon.workers.JobProcess)."""

    job_id: int
    run_dir: Path

    @property
    def pid(self) -> int: ...

    def terminate(self) -> None: ...

    def kill_if_overdue(self, grace_s: float) -> bool: ...


Runner = Callable[[int, list[str], Path, Post], Process]


def stamp() -> str:
    return time.strftime("%F %T")


class JobScheduler:
    """Starts queued jobs within the limits and follows them to their final state.

    Args:
        store: the job store (loop thread only).
        publish: sends an event (loop thread only).
        post: the inbox's post, handed to each job process.
        heavy_jobs, light_jobs: how many of each may run at once.
        cancel_grace_s: SIGKILL a job this long after SIGTERM.
        runner: makes a job process.
    """

    def __init__(self, store: JobStore, publish: Publish, post: Post, *, heavy_jobs: int = 1,
                 light_jobs: int = 4, cancel_grace_s: float = 10.0,
                 runner: Runner = JobProcess):
        self.store = store
        self.publish = publish
        self.post = post
        self.heavy_jobs = heavy_jobs
        self.light_jobs = light_jobs
        self.cancel_grace_s = cancel_grace_s
        self.runner = runner
        self.running: dict[int, Process] = {}
        self.heavy: set[int] = set()
        self.cancelling: set[int] = set()
        self.stopping = False
        self.last_progress_write: dict[int, float] = {}
        self.job_counts: dict[str, int] = {}
        # job id -> the final state its exit decided, while saving it fails (a full disk);
        # retried on the loop's timer until the store takes it.
        self.pending_exits: dict[int, dict[str, Any]] = {}
        self.unsaved_events: set[int] = set()  # jobs whose progress writes failed (said once)
        self.next_queue_look = 0.0  # monotonic time of the timer's next look at the queue
        self.refresh_counts()

    # --- start and stop -------------------------------------------------------------------------

    def recover(self, resume_interrupted: bool) -> None:
        """At start: jobs a dead daemon left running are interrupted (their leftover processes
        killed); those with a checkpoint are queued again when `resume_interrupted`."""
        for job in self.store.mark_interrupted():
            try:
                killed = kill_leftover_group(job.get("pid"), job.get("run_dir"))
            except Exception:  # one job's leftovers never stop the daemon from starting
                log.exception("job %s: could not look for its leftover processes", job["id"])
                killed = False
            log.warning("job %s was running when the daemon died: interrupted%s", job["id"],
                        " (killed its leftover processes)" if killed else "")
            self.log_line(job.get("run_dir"), f"{stamp()} [daemon] "
                                              "interrupted: the daemon stopped")
        if resume_interrupted:
            for job in self.store.requeue_for_resume():
                log.info("job %s will resume from %s", job["id"], job["checkpoint"])
        self.refresh_counts()

    def stop(self) -> None:
        """Start nothing new and ask every running job to checkpoint and stop."""
        self.stopping = True
        for proc in self.running.values():
            proc.terminate()

    def check_timers(self) -> None:
        """The loop's timer: SIGKILL overdue jobs, retry final states that could not be saved,
        and start jobs that waited for disk space."""
        if self.pending_exits:
            self.retry_pending_exits()
        now = time.monotonic()
        if now >= self.next_queue_look:
            self.next_queue_look = now + START_RETRY_S
            if self._slot_free():  # one read of the queue a second, while a slot is free
                self.schedule()
        for proc in self.running.values():
            if proc.kill_if_overdue(self.cancel_grace_s):
                log.warning("job %s did not stop within %.0f s: SIGKILL", proc.job_id,
                            self.cancel_grace_s)

    def job_pids(self) -> list[int]:
        """Pids of running jobs; safe from any thread (a copy; empty if it changed meanwhile)."""
        try:
            return [proc.pid for proc in tuple(self.running.values())]
        except RuntimeError:
            return []

    def refresh_counts(self) -> None:
        # Replaced whole: a worker thread reading `job_counts` sees the old or the new dict.
        self.job_counts = {state: self.store.count(state) for state in
                           ("queued", "running", "interrupted")}

    def publish_state(self, job_id: int, state: str, **extra: Any) -> None:
        self.refresh_counts()
        self.publish(f"job.{job_id}.progress", {"event": "state", "state": state, **extra})
        self.publish(STATUS_TOPIC, {"event": "job", "id": job_id, "state": state})

    # --- scheduling -----------------------------------------------------------------------------

    def _slot_free(self) -> bool:
        heavy = len(self.heavy)
        return heavy < self.heavy_jobs or len(self.running) - heavy < self.light_jobs

    def schedule(self) -> None:
        """Start queued jobs, oldest first, while the heavy and light limits allow."""
        if self.stopping:
            return
        heavy = len(self.heavy)
        light = len(self.running) - heavy
        try:
            queued = self.store.next_queued()
        except Exception:
            log.exception("could not read the job queue; the next exit or submit tries again")
            return
        for job in queued:
            if job["id"] in self.pending_exits:  # failed to start; its state is not saved yet
                continue
            if job["heavy"] and heavy >= self.heavy_jobs:
                continue
            if not job["heavy"] and light >= self.light_jobs:
                continue
            if self._start(job):
                heavy += job["heavy"]
                light += not job["heavy"]

    def _start(self, job: dict[str, Any]) -> bool:
        """Start one queued job; any failure fails that job alone, never the loop."""
        try:
            return self._start_or_raise(job)
        except Exception as exc:
            if disk_full(exc) is not None and job["id"] not in self.running:
                # Nothing started and nothing is wrong with the job: it waits for space.
                log.warning("job %s stays queued: %s", job["id"], exc)
                return False
            reason = exc.message if isinstance(exc, HyperlexError) \
                else f"{type(exc).__name__}: {exc}"
            error = f"could not start: {reason}"
            log.error("job %s (%s) could not start, marked failed: %s", job["id"], job["kind"],
                      reason, exc_info=not isinstance(exc, HyperlexError))
            proc = self.running.pop(job["id"], None)
            self.heavy.discard(job["id"])
            if proc is not None:  # started, then the bookkeeping failed: do not leave it behind
                proc.terminate()
            self.log_line(job.get("run_dir"), f"{stamp()} [daemon] failed: {error}")
            # Saved like an exit's final state: retried on the timer if the store refuses, and
            # never started again meanwhile.
            self.pending_exits[job["id"]] = {"state": "failed", "finished": time.time(),
                                             "error": error, "rc": None, "logged": False}
            self._save_exit(job["id"])
            return False

    def _start_or_raise(self, job: dict[str, Any]) -> bool:
        argv = job_kind(job["kind"]).command(job)
        run_dir = Path(job["run_dir"] or "")
        if not job["run_dir"] or not run_dir.is_absolute():
            raise HyperlexError(f"job {job['id']} has no run dir")
        if not run_dir.is_dir():
            # Deleted while queued: a fresh one lets the job run (its log starts over).
            run_dir.mkdir(parents=True, exist_ok=True)
            log.warning("job %s: its run dir %s was missing, made it again", job["id"], run_dir)
        JobLog(run_dir).append(f"{stamp()} [daemon] start: {' '.join(argv)}")
        proc = self.runner(job["id"], argv, run_dir, self.post)
        self.running[job["id"]] = proc
        if job["heavy"]:
            self.heavy.add(job["id"])
        self.store.update(job["id"], state="running", started=time.time(), pid=proc.pid,
                          attempts=job["attempts"] + 1)
        self.publish_state(job["id"], "running", resume=job["resume"])
        return True

    @staticmethod
    def log_line(run_dir: str | Path | None, line: str) -> None:
        """A line in a job's log when it can be written; a full disk or a missing run dir
        must never stop the bookkeeping that follows."""
        if not run_dir or not Path(run_dir).is_dir():
            return
        try:
            JobLog(Path(run_dir)).append(line)
        except Exception as exc:
            log.warning("could not write to the log of %s: %s", run_dir, exc)

    def cancel(self, job_id: int) -> dict[str, Any]:
        """Cancel a queued or interrupted job at once; SIGTERM a running one. Returns the job."""
        if job_id in self.pending_exits:
            # Exited, but its final state is not saved yet (a full disk): try again now; a
            # job that has ended cannot be cancelled, and the reply says what it is.
            self.retry_pending_exits()
        job = self.store.get(job_id)
        if job_id in self.pending_exits:
            return dict(job, state=self.pending_exits[job_id]["state"], saved=False)
        if job["state"] in ("queued", "interrupted"):
            self.store.update(job["id"], state="cancelled", finished=time.time())
            self.publish_state(job["id"], "cancelled")
        elif job["state"] == "running" and job["id"] in self.running:
            self.cancelling.add(job["id"])
            self.running[job["id"]].terminate()
        return self.store.get(job["id"])

    # --- what job processes report ----------------------------------------------------------------

    def on_item(self, kind: str, job_id: int, payload: Any) -> None:
        """An `event` or `exit` item a job process posted."""
        proc = self.running.get(job_id)
        if kind == "event" and proc is not None:  # the hot path: no database read per step
            try:
                self._on_event(job_id, payload, JobLog(Path(proc.run_dir)), stamp())
            except (sqlite3.Error, OSError) as exc:
                # A full disk: the events still reach subscribers; the saved progress catches
                # up with the next event that can be written. Said once per job.
                if job_id not in self.unsaved_events:
                    self.unsaved_events.add(job_id)
                    log.error("job %s: its progress could not be saved (%s); carrying on",
                              job_id, exc)
            return
        self.unsaved_events.discard(job_id)
        job = self.store.get(job_id)
        joblog = JobLog(Path(job["run_dir"]))
        if kind == "event":
            self._on_event(job_id, payload, joblog, stamp())
        elif kind == "exit":
            self._on_exit(job, int(payload), joblog, stamp())

    def write_lines(self, lines: dict[int, list[str]]) -> None:
        """Jobs' plain output lines: one log event and one file write per job per batch."""
        now = stamp()
        for job_id, batch in lines.items():
            self.publish(f"job.{job_id}.log", {"lines": batch})
            proc = self.running.get(job_id)
            try:
                run_dir = proc.run_dir if proc is not None else self.store.get(job_id)["run_dir"]
                JobLog(Path(run_dir)).append_many(f"{now} {line}" for line in batch)
            except OSError as exc:  # a full disk: said once per job, not once a batch
                if job_id not in self.unsaved_events:
                    self.unsaved_events.add(job_id)
                    log.error("job %s: its log lines could not be written (%s); carrying on",
                              job_id, exc)
            except Exception:
                log.exception("while writing %d log line(s) of job %s", len(batch), job_id)

    def _on_event(self, job_id: int, event: dict[str, Any], joblog: JobLog, now: str) -> None:
        name = event["event"]
        if name == "log":
            self.publish(f"job.{job_id}.log", {"lines": [str(event.get("message", ""))]})
            joblog.append(f"{now} {event.get('message', '')}")
            return
        self.publish(f"job.{job_id}.progress", event)
        if name in ("step", "progress"):
            t = time.monotonic()
            if t - self.last_progress_write.get(job_id, 0.0) > 0.5:
                self.store.update(job_id, progress=event)
                self.last_progress_write[job_id] = t
        elif name == "checkpoint":
            self.store.update(job_id, checkpoint=str(event.get("path")), progress=event)
            joblog.append(f"{now} [daemon] checkpoint at step {event.get('step')}: "
                          f"{event.get('path')}")
        elif name == "done":
            self.store.update(job_id, result=event)

    def _on_exit(self, job: dict[str, Any], rc: int, joblog: JobLog, now: str) -> None:
        job_id = job["id"]
        self.running.pop(job_id, None)
        self.heavy.discard(job_id)
        self.last_progress_write.pop(job_id, None)
        error = None
        if job_id in self.cancelling:
            state = "cancelled"
            self.cancelling.discard(job_id)
        elif self.stopping:
            state = "interrupted"
        elif rc == 0:
            state = "succeeded"
        else:
            state = "failed"
            try:
                tail = joblog.read(max(0, joblog.read(0, 1)["total"] - 3), 3)["lines"]
            except OSError:
                tail = []
            error = f"exit code {rc}" + (f": {tail[-1]}" if tail else "")
        self.log_line(joblog.path.parent, f"{now} [daemon] {state} (exit code {rc})")
        self.pending_exits[job_id] = {"state": state, "finished": time.time(), "error": error,
                                      "rc": rc, "logged": False}
        self._save_exit(job_id)
        self.schedule()

    def retry_pending_exits(self) -> None:
        """Save the final states that could not be saved before (a full disk, meanwhile freed)."""
        saved = False
        for job_id in list(self.pending_exits):
            if not self._save_exit(job_id):
                break  # the store still refuses: the next timer tick tries again
            saved = True
        if saved:  # there is room again: what waited in the queue may start
            self.schedule()

    def _save_exit(self, job_id: int) -> bool:
        """Write one pending final state; True once the store has it."""
        pending = self.pending_exits[job_id]
        state, error = pending["state"], pending["error"]
        try:
            self.store.update(job_id, state=state, finished=pending["finished"], error=error)
        except Exception as exc:
            if not pending["logged"]:  # once: the timer retries this every tick
                pending["logged"] = True
                log.error("job %s %s, but its state could not be saved (%s): retrying until "
                          "it can", job_id, state, exc)
            return False
        del self.pending_exits[job_id]
        if pending["logged"]:
            log.info("job %s: its %s state is saved now", job_id, state)
        extra = {"error": error} if error else {}
        if pending["rc"] is not None:
            extra["exit_code"] = pending["rc"]
        self.publish_state(job_id, state, **extra)
        if state in FINAL_STATES:
            log.info("job %s %s", job_id, state)
        return True
