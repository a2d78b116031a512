"""The engine job kinds through a real daemon: scenes, memory-add, export, eval.

Each kind runs its engine module as a subprocess with JSON-line progress, on tiny data.
"""

from __future__ import annotations

import json
from pathlib import Path

TEXT_A = ("The lighthouse keeper climbed the stairs every night. He lit the lamp and watched "
          "the ships pass the rocks.\n\nIn the morning he wrote the log and slept until noon.")
TEXT_B = ("Therefore, if every prime above two is odd, then the sum of two such primes is even. "
          "The proof follows from the definition.\n\nQED.")


def _events(client, job_id):
    """The job's retained progress events."""
    topic = f"job.{job_id}.progress"
    kept = client.snapshot(topic)["topics"].get(topic, {"events": []})
    return [e["data"] for e in kept["events"]]


def _succeeded(client, job_id, timeout=120):
    job = client.wait_job(job_id, timeout=timeout)
    if job["state"] != "succeeded":
        log = "\n".join(client.job_logs(job_id, limit=5000)["lines"][-20:])
        raise AssertionError(f"job {job_id} {job['state']}: {job['error']}\n{log}")
    return job


def test_scenes_job_builds_scenes_with_progress(client, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(TEXT_A)
    (corpus / "b.txt").write_text(TEXT_B)
    job = client.job_submit("scenes", {"input": str(corpus)}, profile="tiny-test")["job"]
    done = _succeeded(client, job["id"])
    result = done["result"]
    assert result["documents"] == 2 and result["scenes"] >= 2
    lines = Path(result["output"]).read_text().splitlines()
    scenes = [json.loads(line) for line in lines]
    assert len(scenes) == result["scenes"]
    assert {s["doc"] for s in scenes} == {s["doc"] for s in scenes if s["text"]}
    joined = "".join(s["text"] for s in scenes if s.get("level", 0) == max(
        x.get("level", 0) for x in scenes))
    assert "lighthouse keeper" in joined
    progress = [e for e in _events(client, job["id"]) if e.get("event") == "progress"]
    assert [e["done"] for e in progress] == [1, 2]


def test_memory_add_job_then_memory_search(client, tmp_path):
    empty = client.memory_search("where is the lighthouse?")
    assert empty["hits"] == [] and "empty" in empty["hint"]
    scenes = tmp_path / "scenes.jsonl"
    texts = {"d1#0": ("emotion", "The lighthouse keeper lit the lamp and watched the ships."),
             "d2#0": ("logic", "Every prime above two is odd, so the sum of two is even."),
             "d3#0": ("function", "A key opens the door; the hammer drives the nail.")}
    rows = [{"id": sid, "doc": sid.split("#")[0], "span": [0, len(text)], "register": register,
             "text": text} for sid, (register, text) in texts.items()]
    scenes.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    job = client.job_submit("memory-add", {"input": str(scenes)}, profile="tiny-test")["job"]
    done = client.wait_job(job["id"], timeout=120)
    result = done["result"]
    # A bad line fails the job (exit 2) and is named, but the good scenes are added.
    assert done["state"] == "failed" and "1 bad line" in done["error"]
    assert result["added"] == 3 and result["bad_lines"] == 1
    assert any("scenes.jsonl:4:" in line for line in client.job_logs(job["id"])["lines"])
    found = client.memory_search("a lamp that guides ships in the dark", k=2)
    assert found["hint"] is None and found["scenes"] == 3
    assert [h["scene_id"] for h in found["hits"]][0] == "d1#0"
    assert len(found["hits"]) == 2 and "vector" not in found["hits"][0]["scene"]
    only_logic = client.memory_search("a lamp that guides ships", k=3, register="logic")
    assert [h["scene_id"] for h in only_logic["hits"]] == ["d2#0"]


def test_export_job_merges_an_adapter(client, tmp_path, tiny_model_dir):
    from engine.testing.lora import random_lora

    adapter = random_lora(tiny_model_dir("llama"), tmp_path / "adapter", r=4, alpha=8)
    job = client.job_submit("export", {"adapter": str(adapter), "format": "gguf"},
                            profile="tiny-test")["job"]
    result = _succeeded(client, job["id"], timeout=180)["result"]
    out = Path(result["path"])
    assert out.is_file() and out.read_bytes()[:4] == b"GGUF"
    stages = [e["stage"] for e in _events(client, job["id"]) if e.get("event") == "progress"]
    assert stages == ["merge", "gguf"]


def test_eval_job_compares_a_trained_adapter_with_the_base(client):
    train = client.job_submit("train", {"max_steps": 4}, profile="tiny-test")["job"]
    adapter = _succeeded(client, train["id"], timeout=240)["result"]["adapter_dir"]
    assert client.status()["job_kinds"]["eval"] is True
    job = client.job_submit("eval", {"adapter": adapter, "tasks": "loss,density",
                                     "n_resamples": 200}, profile="tiny-test")["job"]
    result = _succeeded(client, job["id"], timeout=240)["result"]
    report = Path(result["report"])
    assert report.is_file() and report.name == "report.html"
    assert (report.parent / "records.jsonl").is_file()
    metrics = json.loads((report.parent / "metrics.json").read_text())
    ppl = next(d for d in metrics["differences"] if d["metric"] == "loss.ppl")
    assert ppl["a"] == "base" and ppl["n"] > 0
    assert any("loss.ppl" in line for line in result["summary"])
    tasks = {e.get("task") for e in _events(client, job["id"]) if e.get("event") == "progress"}
    assert "loss" in tasks


def test_eval_job_with_a_missing_adapter_fails_with_its_path(client, tmp_path):
    job = client.job_submit("eval", {"adapter": str(tmp_path / "nowhere")},
                            profile="tiny-test")["job"]
    done = client.wait_job(job["id"], timeout=120)
    assert done["state"] == "failed"
    log = "\n".join(client.job_logs(job["id"], limit=500)["lines"])
    assert "nowhere" in log and "does not exist" in log
