# hyperlex in an image: hyperlexd serving the OpenAI-compatible HTTP gateway on port 8000.
#
#   docker build -t hyperlex:cuda .                          # CUDA, the default flavour
#   docker build -t hyperlex:cpu --build-arg FLAVOUR=cpu .   # CPU only: no CUDA, a smaller image
#
# docker-compose.yml builds and runs it; docs/deploy.md is the guide (keys, volumes, GPU, TLS).
# Both flavours build llama.cpp from source as ./install.sh does, with --portable (an AVX2
# baseline, CUDA kernels for the usual GPU generations) since an image runs on other machines
# than the one that built it, and --build-only (no model cache, no smoke generation: those need
# the machine it will run on). Build arguments:
#   FLAVOUR             cuda | cpu
#   CUDA_VERSION        the nvidia/cuda tag's CUDA version (devel to build, runtime to run)
#   UBUNTU_VERSION      the nvidia/cuda tag's Ubuntu
#   PYTHON_IMAGE        the CPU flavour's base (build and run)
#   TORCH_INDEX         an extra package index for torch (cpu: PyTorch's CPU wheels, since
#                       PyPI's Linux torch is the CUDA build with gigabytes of CUDA libraries)
#   LLAMA_CMAKE_ARGS    more CMake flags for llama.cpp, e.g. -DCMAKE_CUDA_ARCHITECTURES=90 to
#                       build the kernels of one GPU generation only (a much shorter build)
#   INSTALL_FLAGS       more ./install.sh flags, e.g. --no-models (the image then carries no
#                       default model: profiles name weights under /models)
#   HYPERLEX_UID/GID    the user the daemon runs as (match the owner of ./deploy/keys)

ARG FLAVOUR=cuda
ARG CUDA_VERSION=12.8.1
ARG UBUNTU_VERSION=24.04
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: compilers, the source tree, ./install.sh ------------------------------------------

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build-cuda
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential cmake git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# No GPU (and so no libcuda) while building: programs that link ggml-cuda are linked against
# the toolkit's stub and may leave libcuda's symbols to the driver the container gets at run time.
ARG TORCH_INDEX=""
ARG LLAMA_CMAKE_ARGS=""
ENV HYPERLEX_TORCH_INDEX=${TORCH_INDEX} \
    HYPERLEX_LLAMA_CMAKE_ARGS="-DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined ${LLAMA_CMAKE_ARGS}"

FROM ${PYTHON_IMAGE} AS build-cpu
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential cmake git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG LLAMA_CMAKE_ARGS=""
ENV HYPERLEX_TORCH_INDEX=${TORCH_INDEX} \
    HYPERLEX_LLAMA_CMAKE_ARGS=${LLAMA_CMAKE_ARGS}

FROM build-${FLAVOUR} AS build
ARG FLAVOUR
ARG INSTALL_FLAGS=""
WORKDIR /opt/hyperlex
COPY . .
# (The flavour stages' ENV set HYPERLEX_TORCH_INDEX and HYPERLEX_LLAMA_CMAKE_ARGS for install.sh;
# an ARG would not reach this stage.)
RUN PIP_NO_CACHE_DIR=1 bash ./install.sh --build-only --portable "--$FLAVOUR" $INSTALL_FLAGS \
    && rm -rf /root/.cache

# --- run: the runtime libraries, the built tree, a user that is not root ----------------------

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS run-cuda
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 libgomp1 tini ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && (userdel --remove ubuntu 2>/dev/null || true)
# (Ubuntu's images come with a user `ubuntu` holding uid 1000, the uid given to hyperlex below.)

FROM ${PYTHON_IMAGE} AS run-cpu
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgomp1 tini \
    && rm -rf /var/lib/apt/lists/*

FROM run-${FLAVOUR}
ARG FLAVOUR
ARG HYPERLEX_UID=1000
ARG HYPERLEX_GID=1000
# The venv's interpreter is a link to the base image's python, the same path in both stages of
# a flavour, so the built tree runs where it lands (the same path as in the build stage).
COPY --from=build /opt/hyperlex /opt/hyperlex
# /data is HYPERLEX_HOME: config/, state/ (jobs, adapters, keys made in the container), cache/
# (model conversions) and run/ (the daemon's sockets, made 0700 by the daemon itself). It is
# created here, owned by the user, so that a new named volume starts with that owner.
RUN groupadd --gid "$HYPERLEX_GID" hyperlex \
    && useradd --uid "$HYPERLEX_UID" --gid "$HYPERLEX_GID" --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin hyperlex \
    && mkdir -p /data/config/profiles /data/state /data/cache /models /adapters /keys \
    && chown -R hyperlex:hyperlex /data && chmod 0700 /data
LABEL org.opencontainers.image.title="hyperlex" \
      org.opencontainers.image.description="hyperlexd with its OpenAI-compatible HTTP gateway" \
      io.hyperlex.flavour="${FLAVOUR}"
ENV HYPERLEX_HOME=/data \
    PATH=/opt/hyperlex/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
# Numeric, so that a runtime can tell it is not root without reading /etc/passwd (Kubernetes'
# runAsNonRoot does exactly that).
USER ${HYPERLEX_UID}:${HYPERLEX_GID}
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
# /ready answers 200 once the model has loaded; the first start converts the model (GGUF to
# safetensors, into /data/cache) and loads it, hence the long start period.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=5)"]
# tini is PID 1: it passes SIGTERM on to hyperlexd (which stops its jobs at a checkpoint) and
# reaps the job processes the daemon starts.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["hyperlexd", "--foreground", "--http", "0.0.0.0:8000"]
