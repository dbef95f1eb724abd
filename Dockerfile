# WebEDT internal API server.
#
# Two stages: `builder` installs the locked wheels of requirements.lock into /opt/venv; the
# runtime stage copies that venv onto a fresh slim base with git (the server clones and pushes
# repositories) and tini (PID 1: forwards SIGTERM to Python, reaps orphaned git helpers), and
# runs as an unprivileged user. Build:
#   docker build -t internal-api-server \
#     --build-arg BUILD_COMMIT_SHA="$(git rev-parse HEAD)" \
#     --build-arg BUILD_TIMESTAMP="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
#     --build-arg BUILD_IMAGE_TAG=internal-api-server:1.0.0 .

FROM python:3.11.14-slim-trixie AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
COPY requirements.lock /tmp/requirements.lock
# Binary wheels only: every pinned dependency ships manylinux wheels, so the build needs no
# compiler and cannot silently fall back to compiling a different source release. Every
# package, transitive ones included, is pinned with its hashes (`make lock`): a release that
# is not the one locked fails the build instead of shipping unseen.
# pip and setuptools leave the venv afterwards: production never installs anything.
RUN /opt/venv/bin/pip install --no-cache-dir --only-binary=:all: --require-hashes -r /tmp/requirements.lock \
    && /opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools


FROM python:3.11.14-slim-trixie AS runtime

# Debian replaces point versions of git/tini with security updates and drops the old ones from
# the archive, so exact `=version` pins would break rebuilds; the base image tag pins the release.
# postgresql-client: psql for `python server.py db shell` (the embedded PostgreSQL, which brings
# its own, is a development dependency). The base image's own pip and setuptools go too.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git tini postgresql-client \
    && rm -rf /var/lib/apt/lists/* \
    && python -m pip uninstall --yes --quiet pip setuptools wheel \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /workspace \
    && chown app:app /workspace

COPY --from=builder /opt/venv /opt/venv

# The code stays owned by root (the app user can read, not change it): a compromised process cannot rewrite it.
WORKDIR /app
COPY . /app
# Byte-code compiled once at build time: the app user cannot write __pycache__ under /app.
RUN python -m compileall -q /app

ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NODE_ENV=production \
    PORT=3001 \
    TMP_DIR=/tmp \
    WORKSPACE_DIR=/workspace

# Last, so a new commit does not invalidate the dependency layers above.
ARG BUILD_COMMIT_SHA=unknown
ARG BUILD_TIMESTAMP=unknown
ARG BUILD_IMAGE_TAG=unknown
ENV BUILD_COMMIT_SHA=${BUILD_COMMIT_SHA} \
    BUILD_TIMESTAMP=${BUILD_TIMESTAMP} \
    BUILD_IMAGE_TAG=${BUILD_IMAGE_TAG}
LABEL org.opencontainers.image.title="webedt-internal-api-server" \
      org.opencontainers.image.revision="${BUILD_COMMIT_SHA}" \
      org.opencontainers.image.created="${BUILD_TIMESTAMP}" \
      org.opencontainers.image.version="${BUILD_IMAGE_TAG}"

# Numeric, so orchestrators can verify it is not root (runAsNonRoot) without reading /etc/passwd.
USER 10001:10001
EXPOSE 3001

# Liveness only: /live answers 200 while the process serves, without touching the database, so a
# database outage never makes Docker or Swarm restart healthy tasks (/health reports the database
# for people and the facade). urlopen raises on any non-2xx or no answer. Python: slim has no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('API_PORT') or os.environ.get('PORT') or '3001'; urllib.request.urlopen(f'http://127.0.0.1:{port}/live', timeout=4)"]

# Exec form all the way: tini (PID 1) passes SIGTERM straight to `python server.py`, which drains
# open streams for SHUTDOWN_GRACE_SECONDS (orchestrators: stop_grace_period must be longer).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "server.py"]
