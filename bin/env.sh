# Environment shared by `make demo`, `make stack` and the tests: sourced, not executed.
# Everything lives under $CT_HOME (git-ignored .ct/ by default): MLflow store, Airflow DB, runs.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CT_HOME="${CT_HOME:-$REPO_ROOT/.ct/demo}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$CT_HOME/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$REPO_ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$REPO_ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="${AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION:-True}"
export PYTHONPATH="$REPO_ROOT:$REPO_ROOT/plugins${PYTHONPATH:+:$PYTHONPATH}"
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
