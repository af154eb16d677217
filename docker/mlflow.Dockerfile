# syntax=docker/dockerfile:1
# The MLflow tracking server of docker-compose.yaml: `mlflow server --app-name basic-auth` on PostgreSQL,
# artifacts proxied into /mlflow/artifacts (a volume). The versions are the project venv's.
# Build from the repository root:  docker build -f docker/mlflow.Dockerfile -t ct-mlflow .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY docker/requirements-mlflow.txt /tmp/requirements-mlflow.txt
COPY constraints.txt /tmp/constraints.txt
RUN pip install -r /tmp/requirements-mlflow.txt -c /tmp/constraints.txt \
    && rm /tmp/requirements-mlflow.txt /tmp/constraints.txt \
    && groupadd --gid 10001 mlflow \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin mlflow \
    && mkdir -p /mlflow/artifacts \
    && chown 10001:10001 /mlflow/artifacts

# Root-owned and read-only for the server: the auth config names the auth DB, no secret.
COPY docker/mlflow/basic_auth.ini /etc/mlflow/basic_auth.ini

# HOME and temporary files live on the container's /tmp (tmpfs): the root filesystem is read-only.
ENV MLFLOW_AUTH_CONFIG_PATH=/etc/mlflow/basic_auth.ini \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false \
    HOME=/tmp

USER 10001:10001
EXPOSE 5000
ENTRYPOINT ["mlflow"]
CMD ["server", "--help"]
