# syntax=docker/dockerfile:1
# The trainer/deployer image: `python -m ml <step>` for the KubernetesPodOperator pods of the DAG
# (train_kubernetes, deploy_kubernetes). See docs/kubernetes.md.
#
# Build from the repository root, tagging the commit so the run record knows which code trained:
#   docker build -f docker/ml.Dockerfile --build-arg CT_CODE_VERSION=$(git rev-parse --short=12 HEAD) \
#     -t ct-ml:$(git rev-parse --short=12 HEAD) .
#
# The model configs are baked in under /app/configs: the pod checks that its copy is byte-identical to
# the one Airflow validated (CT_CONFIG_SHA256), so build this image from the same commit as the DAGs,
# or mount the configs at /app/configs (ConfigMap) instead. Relative data paths in a config resolve
# against /app/configs, so the bundled demo data is baked in too (/app/data, 640 KB).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY docker/requirements-ml.txt /tmp/requirements-ml.txt
COPY constraints.txt /tmp/constraints.txt
# libgomp1: LightGBM's OpenMP runtime (the wheel links the system one)
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/* \
    && pip install -r /tmp/requirements-ml.txt -c /tmp/constraints.txt \
    && rm /tmp/requirements-ml.txt /tmp/constraints.txt \
    && groupadd --gid 10001 ct \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin ct

# Code and configs are owned by root and read-only for the runtime user.
COPY ml/ /app/ml/
COPY configs/ /app/configs/
COPY data/ /app/data/

ARG CT_CODE_VERSION=unknown
# CT_HOME (MLflow downloads, run folders) and HOME live on the pod's /tmp emptyDir: the root
# filesystem is mounted read-only.
ENV CT_CODE_VERSION=${CT_CODE_VERSION} \
    CT_HOME=/tmp/ct \
    HOME=/tmp \
    PYTHONPATH=/app \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false

USER 10001:10001
ENTRYPOINT ["python", "-m", "ml"]
CMD ["--help"]
