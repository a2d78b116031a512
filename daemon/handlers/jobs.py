"""Job requests (loop thread): submit, list, get, cancel, logs, resume; and the adapter a
`job:ID` reference names, which chats and export jobs use."""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon import api
from daemon import protocol as proto
from daemon.jobs import BusyError, JobKind, JobLog, Param, job_kind

if TYPE_CHECKING:
    from daemon.server import Server

JOB_REF = re.compile(r"job:(\d+)")
# Job states a job_resume request may restart.
RESUMABLE = ("failed", "cancelled", "interrupted")


def submit(server: Server, req: api.JobSubmitRequest, msg: proto.Message) -> api.JobSubmitReply:
    kind = job_kind(req.kind)
    params = kind.check_params(dict(req.params))
    profile = req.profile or server.profile
    if isinstance(params.get("adapter"), str) and JOB_REF.fullmatch(params["adapter"]):
        params["adapter"] = resolve_adapter(server, params["adapter"])["path"]
    roots = path_roots(server) if is_remote(server, msg) else None
    check_paths(kind, params, server.store.jobs_dir / "new", roots)
    if roots is not None and req.profile and ("/" in profile or profile.endswith(".toml")):
        # A profile the client names may be a .toml path: for a remote client it is a path
        # like any other (the daemon's own profile is the operator's choice, not checked).
        check_paths(PROFILE_PATH, {"profile": profile}, server.store.jobs_dir / "new", roots)
    kind.command({"params": {}, "profile": profile, "run_dir": "", "resume": False})
    job, created = server.store.submit(req.kind, profile, dict(params), req.request_id,
                                       server.settings.max_queue)
    if created:
        # The job is queued once its row is saved: a log line the full disk refuses does not
        # make the reply say otherwise (the client would not know the job it left queued).
        server.scheduler.log_line(job["run_dir"], f"{time.strftime('%F %T')} [daemon] queued "
                                                   f"{req.kind} with {params}")
        server.scheduler.publish_state(job["id"], "queued")
        server.scheduler.schedule()
        job = server.store.get(job["id"])
    return api.JobSubmitReply(job=job, created=created)


# The `profile` field of a request, checked as a path that is read (it is not a param).
PROFILE_PATH = JobKind("profile", "", heavy=False, argv=lambda spec: [],
                       params={"profile": Param(str, "profile .toml", path="input")})


def is_remote(server: Server, msg: Any = None) -> bool:
    """Requests over TCP come from another machine: the daemon's files are a boundary there.
    Over ipc (or an SSH tunnel to it) a client holding the key is the same user. Requests
    the HTTP gateway makes for its clients are remote wherever it binds."""
    if msg is not None and msg.header.get("via") == "http":
        return True
    return (server.options.bind or "").startswith("tcp://")


def path_roots(server: Server) -> list[Path]:
    """Where a remote client's path params may point (symlinks followed): the configured
    `path_roots`, by default the daemon's state and cache dirs."""
    configured = getattr(server.settings, "path_roots", ()) or ()
    roots = [Path(r).expanduser() for r in configured] or [server.dirs.state, server.dirs.cache]
    return [root.resolve() for root in roots]


def _path_values(name: str, value: str) -> list[str]:
    # eval's `adapter` is "[NAME=]DIR" items, comma-separated; every other path is one path.
    if name != "adapter" or "," not in value and "=" not in value:
        return [value]
    return [item.rpartition("=")[2] for item in value.split(",") if item.strip()]


def check_paths(kind: JobKind, params: dict[str, Any], run_dir: Path,
                roots: list[Path] | None) -> None:
    """Refuse path params that reach where they should not.

    Relative paths are the job's: it runs in its run dir. For everybody, an `output` must not
    exist yet unless it lies in the run dir (a job never overwrites a file elsewhere). With
    `roots` (a remote client), every path must resolve, symlinks followed, under one of them.

    Raises:
        BadRequest: naming the param, the resolved path and the rule.
    """
    what = "the request's field" if kind is PROFILE_PATH else f"{kind.name} job param"
    for name, param in kind.params.items():
        if param.path is None or not isinstance(params.get(name), str):
            continue
        for raw in _path_values(name, params[name]):
            given = Path(raw).expanduser()
            resolved = (given if given.is_absolute() else run_dir / given).resolve()
            if roots is not None and not any(resolved.is_relative_to(r) for r in roots):
                raise api.BadRequest(
                    f"{what} {name!r}: {resolved} is outside the paths a remote client"
                    f" may use ({', '.join(map(str, roots))})",
                    hint="put the file under one of them, or add a root to the profile's "
                         "[daemon] path_roots")
            inside_run_dir = not given.is_absolute() and resolved.is_relative_to(run_dir)
            if param.path == "output" and not inside_run_dir and os.path.lexists(resolved):
                raise api.BadRequest(
                    f"{what} {name!r}: {resolved} exists already; a job "
                    "never overwrites a file outside its run dir",
                    hint="choose a new path, or leave it out to write into the run dir")


def list_(server: Server, req: api.JobListRequest, msg: proto.Message) -> api.JobListReply:
    return api.JobListReply(jobs=server.store.list(req.state, max(1, min(req.limit, 1000))))


def get(server: Server, req: api.JobIdRequest, msg: proto.Message) -> api.JobReply:
    return api.JobReply(job=server.store.get(req.id))


def cancel(server: Server, req: api.JobIdRequest, msg: proto.Message) -> api.JobReply:
    return api.JobReply(job=server.scheduler.cancel(req.id))


def logs(server: Server, req: api.JobLogsRequest, msg: proto.Message) -> api.JobLogsReply:
    job = server.store.get(req.id)
    page = JobLog(Path(job["run_dir"])).read(max(0, req.offset), max(1, min(req.limit, 5000)))
    return api.JobLogsReply(**page)


def resume(server: Server, req: api.JobResumeRequest, msg: proto.Message) -> api.JobResumeReply:
    """Queue a failed, cancelled or interrupted job again, from its checkpoint.

    Without a checkpoint it is refused unless `restart` is true (then it starts over).
    """
    job = server.store.get(req.id)
    if job["state"] not in RESUMABLE:
        raise api.BadRequest(f"job {job['id']} is {job['state']}: only "
                             f"{', '.join(RESUMABLE)} jobs can be resumed")
    if not job["checkpoint"] and not req.restart:
        raise api.BadRequest(f"job {job['id']} has no checkpoint to resume from",
                             hint="send restart=true to run it again from the start")
    again = bool(job["checkpoint"])
    if server.store.count("queued") >= server.settings.max_queue:
        raise BusyError(f"the job queue is full ({server.settings.max_queue} queued)",
                        hint="wait for jobs to finish or cancel some")
    server.store.update(job["id"], state="queued", resume=int(again), finished=None,
                        pid=None, error=None)
    JobLog(Path(job["run_dir"])).append(
        f"{time.strftime('%F %T')} [daemon] queued again "
        + (f"to resume from {job['checkpoint']}" if again else "to restart"))
    server.scheduler.publish_state(job["id"], "queued", resume=again)
    server.scheduler.schedule()
    return api.JobResumeReply(job=server.store.get(job["id"]), resume=again)


def resolve_adapter(server: Server, spec: str, msg: Any = None) -> dict[str, str]:
    """A chat's adapter: "job:ID" (a succeeded train job), a PEFT dir or GGUF LoRA path, or
    the name of an adapter already loaded. Returns `{name, path?}`."""
    match = JOB_REF.fullmatch(spec)
    if match:
        job = server.store.get(int(match.group(1)))
        adapter_dir = (job.get("result") or {}).get("adapter_dir")
        if job["state"] != "succeeded" or not adapter_dir:
            raise api.BadRequest(f"job {job['id']} ({job['kind']}, {job['state']}) has no "
                                 "adapter", hint="use a succeeded train job")
        return {"name": f"job-{job['id']}", "path": adapter_dir}
    path = Path(spec).expanduser()
    if is_remote(server, msg):
        # Checked before existence, so a remote client learns nothing of paths outside the
        # roots (not even whether they exist) and loads nothing from there.
        roots = path_roots(server)
        resolved = path.resolve()
        if ("/" in spec or resolved.exists()) and \
                not any(resolved.is_relative_to(root) for root in roots):
            raise api.BadRequest(
                f"adapter {resolved} is outside the paths a remote client may use "
                f"({', '.join(map(str, roots))})",
                hint="use job:ID of a train job, or an adapter under one of them")
    if "/" in spec or path.exists():
        if not path.exists():
            raise api.BadRequest(f"adapter {spec} does not exist")
        path = path.resolve()
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:6]
        # PEFT adapter names become module keys: no dots or slashes.
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", path.name)[:40] or "adapter"
        return {"name": f"{stem}-{digest}", "path": str(path)}
    return {"name": spec}
