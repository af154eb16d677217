# syntax=docker/dockerfile:1
# The Airflow image of docker-compose.yaml (airflow-init, api-server, scheduler, dag-processor, triggerer):
# the official slim image plus the project's pinned requirements, DAGs, operators (plugins/), the `ml` library,
# the model configs and the bundled demo data. Tasks run in the scheduler container (LocalExecutor).
#
# Build from the repository root, tagging the commit so the run record knows which code trained:
#   docker build -f docker/airflow.Dockerfile --build-arg CT_CODE_VERSION=$(git rev-parse --short=12 HEAD) \
#     -t ct-airflow .
ARG AIRFLOW_IMAGE=apache/airflow:slim-3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}

# pip runs as the image's `airflow` user, the documented way to extend it; pinning apache-airflow keeps pip
# from replacing the image's Airflow. constraints.txt locks every transitive version to the tested venv.
COPY requirements.txt constraints.txt /tmp/ct-requirements/
RUN pip install --no-cache-dir "apache-airflow==3.3.2" \
        -r /tmp/ct-requirements/requirements.txt -c /tmp/ct-requirements/constraints.txt

USER root
# libgomp1: LightGBM's OpenMP runtime (the wheel links the system one; train_local runs in this image)
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
# Writable state only in volumes (mounted over these folders, which give the volumes their owner):
# CT_HOME (run records, local deploy state) and the admin's password file.
RUN rm -rf /tmp/ct-requirements \
    && mkdir -p /opt/ct/home /opt/airflow/auth \
    && chown airflow:0 /opt/ct/home /opt/airflow/auth \
    && chmod 0750 /opt/ct/home /opt/airflow/auth

# The code is owned by root: read-only for the `airflow` user that runs every service and task.
COPY dags/ /opt/ct/dags/
COPY plugins/ /opt/ct/plugins/
COPY ml/ /opt/ct/ml/
COPY stack/ /opt/ct/stack/
COPY configs/ /opt/ct/configs/
COPY data/ /opt/ct/data/

ARG CT_CODE_VERSION=unknown
# The working directory is the code root, so the trigger form's relative paths (data/attrition/...,
# configs/...) resolve as they do in a checkout.
ENV CT_CODE_VERSION=${CT_CODE_VERSION} \
    CT_HOME=/opt/ct/home \
    PYTHONPATH=/opt/ct:/opt/ct/plugins \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/ct/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/ct/plugins
WORKDIR /opt/ct
USER airflow
