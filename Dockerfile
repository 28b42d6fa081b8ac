# syntax=docker/dockerfile:1
# One image for every role of openplace. The role is the command:
#   docker run IMAGE api | realtime | persister | serve | restore
# (distributed roles need OPENPLACE_REDIS_URL and OPENPLACE_DATABASE_URL; see
# deploy/compose.yaml and deploy/k8s/). Build from the repository root:
#   docker build -t openplace .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with the pinned dependencies, then the project ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/openplace
WORKDIR /build
# The dependencies first, from the metadata and the pins alone: this layer is rebuilt
# only when pyproject.toml or requirements/constraints.txt change, not for every source
# change. Only [project].dependencies: no test, bench or dev extras.
COPY pyproject.toml ./
COPY requirements/constraints.txt requirements/constraints.txt
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements/runtime.txt \
    && /opt/openplace/bin/pip install -c requirements/constraints.txt -r requirements/runtime.txt
# Then the project itself, as scripts/serve installs it (pip install -c constraints .),
# without touching the dependencies installed above.
COPY README.md LICENSE ./
COPY src ./src
RUN /opt/openplace/bin/pip install --no-deps -c requirements/constraints.txt . \
    && /opt/openplace/bin/python -m compileall -q /opt/openplace/lib

# ---- runtime: the virtualenv on a clean slim image, as a non-root user ----
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 openplace \
    && useradd --system --uid 10001 --gid openplace --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin openplace \
    && mkdir -p /data && chown openplace:openplace /data
COPY --from=build /opt/openplace /opt/openplace
COPY deploy/docker/healthcheck.py /opt/openplace/healthcheck.py
# Containers bind every interface (the default 127.0.0.1 would be unreachable from
# nginx); /data holds the embedded store and a generated secret (`serve` only: the
# distributed roles keep nothing on disk, and get OPENPLACE_SECRET from the environment).
ENV PATH=/opt/openplace/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OPENPLACE_HOST=0.0.0.0 \
    OPENPLACE_PORT=8000 \
    OPENPLACE_DATA_DIR=/data
USER 10001:10001
WORKDIR /data
# 8000: HTTP (api, realtime, serve); 9464: the persister's metrics and health.
EXPOSE 8000 9464
# Readiness of whichever role runs: GET /readyz on OPENPLACE_PORT (api, realtime, serve),
# else on the persister's metrics port (OPENPLACE_PERSISTER_METRICS_PORT, default 9464).
# A standby persister is ready. Kubernetes ignores this and uses deploy/k8s's probes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=40s --retries=3 \
    CMD ["python", "/opt/openplace/healthcheck.py"]
ENTRYPOINT ["openplace"]
CMD ["serve"]
