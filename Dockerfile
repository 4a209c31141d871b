# syntax=docker/dockerfile:1
# bpsync: BigPanda <-> ServiceNow incident sync daemon.
#
#   docker build -t bpsync .
#   docker run -d --name bpsync -p 8080:8080 -v bpsync-state:/var/lib/bpsync \
#     -e BPSYNC_SERVICENOW__INSTANCE=acme -e BPSYNC_SERVICENOW__USERNAME=bpsync \
#     -e BPSYNC_SERVICENOW__PASSWORD_FILE=/run/secrets/sn_password \
#     -e BPSYNC_BIGPANDA__API_KEY_FILE=/run/secrets/bp_api_key \
#     -e BPSYNC_BIGPANDA__BEARER_TOKEN_FILE=/run/secrets/bp_org_token bpsync
#
# Secrets: every secret setting also accepts <NAME>_FILE (Docker/Kubernetes secrets).
# `docker stop` sends SIGTERM and waits 10 s: bpsync finishes its writes well within that.

ARG PYTHON_IMAGE=python:3.11-slim

# --------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sync ./sync
COPY migrations ./migrations
# bpsync and every dependency as wheels: the runtime stage installs offline
RUN pip wheel --wheel-dir /wheels .

# --------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="bpsync" \
      org.opencontainers.image.description="Two-way sync of BigPanda and ServiceNow incidents" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=builder /wheels /wheels
RUN pip install --no-index --find-links /wheels bpsync && rm -rf /wheels
RUN groupadd --system --gid 10001 bpsync \
    && useradd --system --uid 10001 --gid bpsync --home-dir /var/lib/bpsync \
       --shell /usr/sbin/nologin bpsync \
    && mkdir -p /var/lib/bpsync \
    && chown bpsync:bpsync /var/lib/bpsync \
    && chmod 0750 /var/lib/bpsync

# The embedded SQLite database lives in the state directory (a volume); set
# BPSYNC_DATABASE_URL=postgresql+asyncpg://... for Postgres and several replicas.
# Health and metrics listen on every interface inside the container.
ENV BPSYNC_STATE_DIR=/var/lib/bpsync \
    BPSYNC_HTTP_HOST=0.0.0.0 \
    BPSYNC_HTTP_PORT=8080 \
    BPSYNC_LOG_FORMAT=json
VOLUME ["/var/lib/bpsync"]
WORKDIR /var/lib/bpsync
USER bpsync:bpsync
EXPOSE 8080

# no curl in the slim image: the standard library asks /healthz
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('BPSYNC_HTTP_PORT', '8080'), timeout=4)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["bpsync"]
CMD ["run"]
