"""Model configs that do not load: reported as this file's Airflow import error, naming each file.

Defines no DAG. dags/retraining.py and dags/rollback.py build DAGs only for the configs that load, so a
broken config never takes the other models' DAGs down with it; this file makes the broken ones visible
where Airflow shows problems with DAG files (the UI's import errors, `GET /api/v2/importErrors`,
`airflow dags list-import-errors`), one line per file with the reason (`gates.max_regresion: unknown key`).
"""

from __future__ import annotations

from ct_airflow.catalog import config_dir, load_catalog

_errors = load_catalog().errors
if _errors:
    raise ImportError(f"{len(_errors)} model config(s) in {config_dir()} do not load; their DAGs are missing:\n"
                      + "\n".join(f"- {message}" for _path, message in sorted(_errors.items())))
