"""`python -m stack up|down|status|dotenv|airflow-init`: the docker-compose services as local processes.

    up            start PostgreSQL databases, MLflow and the four Airflow services (see stack.native)
    down          stop them (`--purge` also drops the databases and roles)
    status        pids and health of each service
    dotenv        print .env.example with fresh random secrets: `python3 -m stack dotenv > .env`
    airflow-init  migrate the Airflow DB and write the admin's password (docker-compose's airflow-init job)
    mlflow-init   the serving login: READ on each model's registry entries (docker-compose's mlflow-init job)

Settings come from the environment, then .env (CT_HOME, AIRFLOW_API_PORT, MLFLOW_PORT, PGHOST, PGPORT, the
secrets of .env.example); `bin/stack` (`make stack`) sets up the environment and calls this.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

from stack.mlflow_access import AccessError, reader_from_environ
from stack.native import (
    REPO,
    SERVICES,
    StackConfig,
    StackError,
    airflow_init,
    config_folder,
    dotenv_text,
    drop_databases,
    health,
    running,
    start,
    stop,
)

log = logging.getLogger("stack")


def _print_usage(cfg: StackConfig, seconds: float) -> None:
    secrets_from = "the environment / .env" if (REPO / ".env").is_file() else str(cfg.secrets_file)
    print(f"""
Stack up in {seconds:.0f}s (CT_HOME={cfg.home})
  Airflow UI     {cfg.api_url}   user {cfg.admin_user}, password AIRFLOW_ADMIN_PASSWORD (from {secrets_from};
                 the file Airflow reads: {cfg.passwords_file})
  MLflow UI      {cfg.mlflow_url}   user {cfg.mlflow_admin_user}, password MLFLOW_ADMIN_PASSWORD (same place)
  serving login  user {cfg.serving_user}, password MLFLOW_SERVING_PASSWORD: READ on the models only
  MLflow client  export MLFLOW_TRACKING_URI={cfg.mlflow_url} MLFLOW_TRACKING_USERNAME={cfg.mlflow_admin_user} \\
                        MLFLOW_TRACKING_PASSWORD=<MLFLOW_ADMIN_PASSWORD>
  logs           {cfg.log_dir}/<service>.log   (task logs: {cfg.airflow_home / 'logs'})
  run records    {cfg.home / 'runs'}/<model>/<run>/run_record.json
  trigger        UI: DAG `employee-attrition.retrain` (one `<name>.retrain` per configs/*.yaml) -> Trigger (params
                 form), e.g. current_path data/attrition/current_unlabelled.csv; roll back: `<name>.rollback`
  stop           bin/stack down      (docs/stack.md has the walk-through)
""")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[1:]))
    parser.add_argument("action", nargs="?", default="up",
                        choices=["up", "down", "status", "dotenv", "airflow-init", "mlflow-init"])
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for health (up)")
    parser.add_argument("--purge", action="store_true",
                        help="down: also drop the stack's databases and roles (its MLflow and Airflow history)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        if args.action == "dotenv":
            sys.stdout.write(dotenv_text((REPO / ".env.example").read_text()))
            return 0
        if args.action == "airflow-init":
            airflow_init(os.environ)
            return 0
        if args.action == "mlflow-init":
            grant = reader_from_environ(os.environ, config_folder(os.environ))
            print(json.dumps(grant.to_dict()))
            return 0
        cfg = StackConfig.from_environ(os.environ)
        if args.action == "up":
            began = time.monotonic()
            start(cfg, timeout_s=args.timeout)
            _print_usage(cfg, time.monotonic() - began)
        elif args.action == "down":
            stopped = stop(cfg)
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
            if args.purge:
                drop_databases(cfg)
                print(f"dropped databases {cfg.airflow_db}, {cfg.mlflow_db}, {cfg.mlflow_auth_db}")
        else:
            alive = running(cfg)
            report = health(cfg) if alive else {}
            for name in SERVICES:
                pid = alive.get(name)
                print(f"{name:22} {'pid ' + str(pid) if pid else 'stopped':12} {report.get(name, '')}")
            return 0 if alive else 3
    except (StackError, AccessError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
