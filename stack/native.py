"""The services of docker-compose.yaml as local processes on 127.0.0.1, with the same settings.

    postgres              the machine's server (PGHOST/PGPORT, default 127.0.0.1:5432, user postgres):
                          databases and roles made by docker/postgres-init/10-ct-databases.sh, the
                          very script the postgres container runs
    airflow-init          `airflow_init`: `airflow db migrate` + the admin's password file (compose runs the
                          same function: `python -m stack airflow-init`)
    mlflow                `mlflow server --app-name basic-auth` on Postgres, proxied artifacts under
                          $CT_HOME/stack/mlflow/artifacts
    mlflow-init           once MLflow answers: the serving login MLFLOW_SERVING_USER with READ on each
                          config's model (stack.mlflow_access; compose runs the same function)
    airflow-api-server    `airflow api-server --host 127.0.0.1`; scheduler (LocalExecutor), dag-processor
    airflow-scheduler     and triggerer share one JWT secret, fernet key and API secret; login through
    airflow-dag-processor SimpleAuthManager (AIRFLOW_ADMIN_USER, password AIRFLOW_ADMIN_PASSWORD)
    airflow-triggerer

What the containers get from docker-compose.yaml's `environment:` they get here from `airflow_env` and
`mlflow_server_env` (tests/stack/test_compose.py checks the two agree). The secrets are the variables of
.env.example: taken from the environment, else from the repository's .env (the file compose reads), else
generated once into $CT_HOME/stack/secrets.env (mode 600).

Each service runs in its own process group (pids in $CT_HOME/stack/pids.json, output in
$CT_HOME/stack/logs/<service>.log); `stop` ends the groups, children included. The Airflow services
run in the repository root, so relative paths in the trigger form (`data/attrition/...`) resolve as
they do for the CLI. The serving container has no process here: the DAG's `local` deploy target
starts the model server itself (on the config's deploy.port), from the sha256-verified file, so it needs no
registry login; a server that follows an alias (`python -m ml serve --model-uri models:/<name>@champion`)
gets `mlflow_serving_env`, the read-only login.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

from ml.procs import group_alive

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DB_INIT_SCRIPT = REPO / "docker" / "postgres-init" / "10-ct-databases.sh"
DOTENV = REPO / ".env"

#: The secrets of docker-compose.yaml (see .env.example), minus POSTGRES_PASSWORD (the local server is ours).
SECRET_NAMES = ("AIRFLOW_DB_PASSWORD", "MLFLOW_DB_PASSWORD", "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_JWT_SECRET",
                "AIRFLOW_API_SECRET_KEY", "AIRFLOW_FERNET_KEY", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_FLASK_SECRET_KEY",
                "MLFLOW_SERVING_PASSWORD", "CT_API_TOKEN")
MLFLOW = "mlflow"
AIRFLOW_SERVICES = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
SERVICES = (MLFLOW, *AIRFLOW_SERVICES)
MLFLOW_AUTH_FUNCTION = "mlflow.server.auth:authenticate_request_basic_auth"

#: Airflow settings that are the same natively and in docker-compose.yaml's x-airflow-env, value for value.
AIRFLOW_SETTINGS = {
    "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
#: `mlflow server` options that are the same natively and in docker-compose.yaml.
MLFLOW_SERVER_OPTIONS = ("--app-name", "basic-auth", "--serve-artifacts")


class StackError(RuntimeError):
    """The stack cannot start (or is already running); the message says which service and why."""


def generate_secrets() -> dict[str, str]:
    """Fresh values for SECRET_NAMES: URL-safe (they go into connection URLs), fernet key as Airflow wants."""
    values = {name: secrets.token_hex(24) for name in SECRET_NAMES}
    values["AIRFLOW_FERNET_KEY"] = base64.urlsafe_b64encode(os.urandom(32)).decode()
    return values


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file, parsed by python-dotenv: comments, blank lines, `export ` and
    surrounding quotes are handled as Compose does; a name without `=` is skipped; `${VAR}` is not
    expanded (values are taken literally). A missing file reads as empty."""
    if not path.is_file():
        return {}
    from dotenv import dotenv_values  # here, not at the top: `python3 -m stack dotenv` needs only the stdlib

    return {name: value for name, value in dotenv_values(path, interpolate=False).items() if value is not None}


def load_secrets(state_dir: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """SECRET_NAMES from `environ`, else from <state_dir>/secrets.env, generated there when missing."""
    path = state_dir / "secrets.env"
    stored = read_env_file(path)
    missing = [name for name in SECRET_NAMES if not stored.get(name)]
    if missing:
        generated = generate_secrets()
        stored.update({name: generated[name] for name in missing})
        state_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text("# Generated by bin/stack; variables of the same name in the environment or .env win.\n"
                        + "".join(f"{name}={stored[name]}\n" for name in SECRET_NAMES))
    return {name: environ.get(name) or stored[name] for name in SECRET_NAMES}


def dotenv_text(example: str) -> str:
    """.env.example with every empty secret filled by a fresh random value (`python -m stack dotenv > .env`)."""
    values = generate_secrets() | {"POSTGRES_PASSWORD": secrets.token_hex(24)}
    lines = []
    for line in example.splitlines():
        name, sep, value = line.partition("=")
        if sep and name in values and not value.strip():
            line = f"{name}={values[name]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def mlflow_auth_ini(database_uri: str, admin_user: str) -> str:
    """The basic-auth config (MLFLOW_AUTH_CONFIG_PATH); docker/mlflow/basic_auth.ini is this for compose."""
    return ("[mlflow]\n"
            "default_permission = NO_PERMISSIONS\n"
            f"database_uri = {database_uri}\n"
            f"admin_username = {admin_user}\n"
            f"authorization_function = {MLFLOW_AUTH_FUNCTION}\n")


@dataclass(frozen=True)
class StackConfig:
    """Where the native stack lives, which ports and databases it uses, and its secrets."""

    home: Path  # CT_HOME of the stack's task processes; the stack's own state goes to home/stack
    secrets: Mapping[str, str]
    api_port: int = 8080
    mlflow_port: int = 5000
    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_superuser: str = "postgres"
    airflow_db: str = "airflow"
    airflow_db_user: str = "airflow"
    mlflow_db: str = "mlflow"
    mlflow_auth_db: str = "mlflow_auth"
    mlflow_db_user: str = "mlflow"
    admin_user: str = "admin"  # Airflow UI/API login
    mlflow_admin_user: str = "admin"
    serving_user: str = "ct-serving"  # the model server's read-only MLflow login (stack.mlflow_access)
    mlflow_workers: int = 2
    serve_logs: bool = False  # Airflow's log servers bind every interface; the api-server reads files here
    extra_env: Mapping[str, str] = field(default_factory=dict)  # e.g. CT_SCHEDULE, CT_CONFIG_DIR

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], dotenv: Path | None = DOTENV) -> StackConfig:
        """The settings `bin/stack` uses: the environment, then .env (the variables of .env.example).

        CT_HOME, AIRFLOW_API_PORT, MLFLOW_PORT, PGHOST, PGPORT, AIRFLOW_ADMIN_USER, MLFLOW_ADMIN_USER,
        the secrets, and CT_SCHEDULE / CT_CONFIG_DIR / CT_MLFLOW_UI_URL for the DAGs.
        """
        env = {**(read_env_file(dotenv) if dotenv else {}), **environ}
        home = Path(env.get("CT_HOME") or REPO / ".ct" / "stack").resolve()
        return cls(
            home=home, secrets=load_secrets(home / "stack", env),
            api_port=int(env.get("AIRFLOW_API_PORT") or 8080), mlflow_port=int(env.get("MLFLOW_PORT") or 5000),
            pg_host=env.get("PGHOST") or "127.0.0.1", pg_port=int(env.get("PGPORT") or 5432),
            admin_user=env.get("AIRFLOW_ADMIN_USER") or "admin",
            mlflow_admin_user=env.get("MLFLOW_ADMIN_USER") or "admin",
            serving_user=env.get("MLFLOW_SERVING_USER") or "ct-serving",
            extra_env={name: env[name] for name in ("CT_SCHEDULE", "CT_CONFIG_DIR", "CT_MLFLOW_UI_URL")
                       if env.get(name)},
        )

    @property
    def state_dir(self) -> Path:
        return self.home / "stack"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def airflow_home(self) -> Path:
        return self.state_dir / "airflow"

    @property
    def passwords_file(self) -> Path:
        return self.airflow_home / "passwords.json"

    @property
    def secrets_file(self) -> Path:
        return self.state_dir / "secrets.env"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def pg_url(self, scheme: str, user: str, database: str, password: str | None = None) -> str:
        """A connection URL to the stack's PostgreSQL (the password only where given)."""
        credentials = f"{user}:{password}" if password else user
        return f"{scheme}://{credentials}@{self.pg_host}:{self.pg_port}/{database}"


def mlflow_client_env(cfg: StackConfig) -> dict[str, str]:
    """What an MLflow client (task process, test, notebook) needs to reach the tracking server."""
    return {"MLFLOW_TRACKING_URI": cfg.mlflow_url, "MLFLOW_TRACKING_USERNAME": cfg.mlflow_admin_user,
            "MLFLOW_TRACKING_PASSWORD": cfg.secrets["MLFLOW_ADMIN_PASSWORD"]}


def mlflow_serving_env(cfg: StackConfig) -> dict[str, str]:
    """What a model server following the registry needs: the read-only login, never the admin's."""
    return {"MLFLOW_TRACKING_URI": cfg.mlflow_url, "MLFLOW_TRACKING_USERNAME": cfg.serving_user,
            "MLFLOW_TRACKING_PASSWORD": cfg.secrets["MLFLOW_SERVING_PASSWORD"]}


def config_folder(environ: Mapping[str, str]) -> Path:
    """The model configs the DAGs are built from: $CT_CONFIG_DIR, else the repository's configs/."""
    return Path(environ.get("CT_CONFIG_DIR") or REPO / "configs").resolve()


def mlflow_init(cfg: StackConfig) -> None:
    """What compose's mlflow-init job does: the serving login with READ on every config's model."""
    from stack.mlflow_access import AccessError, config_model_names, ensure_model_reader

    models = config_model_names(config_folder(cfg.extra_env))
    if not models:
        log.warning("mlflow-init: no model config in %s: no serving login made", config_folder(cfg.extra_env))
        return
    try:
        ensure_model_reader(cfg.mlflow_url, cfg.mlflow_admin_user, cfg.secrets["MLFLOW_ADMIN_PASSWORD"],
                            cfg.serving_user, cfg.secrets["MLFLOW_SERVING_PASSWORD"], models)
    except AccessError as exc:
        raise StackError(f"mlflow-init: {exc}") from None


def airflow_env(cfg: StackConfig) -> dict[str, str]:
    """The environment of every Airflow service (docker-compose.yaml's x-airflow-env, natively)."""
    return {
        **AIRFLOW_SETTINGS,
        "AIRFLOW_HOME": str(cfg.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": cfg.pg_url(
            "postgresql+psycopg2", cfg.airflow_db_user, cfg.airflow_db, cfg.secrets["AIRFLOW_DB_PASSWORD"]),
        "AIRFLOW__CORE__FERNET_KEY": cfg.secrets["AIRFLOW_FERNET_KEY"],
        "AIRFLOW__API_AUTH__JWT_SECRET": cfg.secrets["AIRFLOW_JWT_SECRET"],
        "AIRFLOW__API__SECRET_KEY": cfg.secrets["AIRFLOW_API_SECRET_KEY"],
        "AIRFLOW__API__BASE_URL": cfg.api_url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{cfg.api_url}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{cfg.admin_user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(cfg.passwords_file),
        "AIRFLOW_ADMIN_USER": cfg.admin_user,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")]),
        "CT_HOME": str(cfg.home),
        **mlflow_client_env(cfg),
        **cfg.extra_env,
    }


def mlflow_server_env(cfg: StackConfig) -> dict[str, str]:
    """The tracking server's environment: the DB password via PGPASSWORD (never on a command line)."""
    return {"PGPASSWORD": cfg.secrets["MLFLOW_DB_PASSWORD"], "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "MLFLOW_AUTH_CONFIG_PATH": str(cfg.state_dir / "mlflow" / "basic_auth.ini"),
            "MLFLOW_AUTH_ADMIN_USERNAME": cfg.mlflow_admin_user,
            "MLFLOW_AUTH_ADMIN_PASSWORD": cfg.secrets["MLFLOW_ADMIN_PASSWORD"],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": cfg.secrets["MLFLOW_FLASK_SECRET_KEY"]}


def commands(cfg: StackConfig) -> dict[str, list[str]]:
    """The command line of each service, in start order."""
    airflow = [sys.executable, "-m", "airflow"]
    skip_logs = [] if cfg.serve_logs else ["--skip-serve-logs"]
    return {
        MLFLOW: [sys.executable, "-m", "mlflow", "server", *MLFLOW_SERVER_OPTIONS,
                 "--backend-store-uri", cfg.pg_url("postgresql", cfg.mlflow_db_user, cfg.mlflow_db),
                 "--artifacts-destination", str(cfg.state_dir / "mlflow" / "artifacts"),
                 "--host", "127.0.0.1", "--port", str(cfg.mlflow_port), "--workers", str(cfg.mlflow_workers)],
        "airflow-api-server": [*airflow, "api-server", "--host", "127.0.0.1", "--port", str(cfg.api_port)],
        "airflow-scheduler": [*airflow, "scheduler", *skip_logs],
        "airflow-dag-processor": [*airflow, "dag-processor"],
        "airflow-triggerer": [*airflow, "triggerer", *skip_logs],
    }


def airflow_init(environ: Mapping[str, str], log_file: Path | None = None) -> None:
    """What the airflow-init job does (natively and in compose): migrate the metadata DB, then write the
    admin's password where SimpleAuthManager reads it, so the login is AIRFLOW_ADMIN_PASSWORD, not a
    generated one. Reads AIRFLOW_ADMIN_USER, AIRFLOW_ADMIN_PASSWORD and the passwords-file setting."""
    password = environ.get("AIRFLOW_ADMIN_PASSWORD")
    passwords_file = environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
    if not password or not passwords_file:
        raise StackError("airflow-init needs AIRFLOW_ADMIN_PASSWORD and "
                         "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE (see .env.example)")
    cmd = [sys.executable, "-m", "airflow", "db", "migrate"]
    if log_file is None:
        migrated = subprocess.run(cmd, env={**os.environ, **environ}, timeout=600)
    else:
        with log_file.open("ab") as out:
            migrated = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **environ},
                                      timeout=600)
    if migrated.returncode != 0:
        where = f"; last lines of {log_file}:\n{_tail(log_file)}" if log_file else ""
        raise StackError(f"`airflow db migrate` failed (exit {migrated.returncode}){where}")
    path = Path(passwords_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(json.dumps({environ.get("AIRFLOW_ADMIN_USER") or "admin": password}) + "\n")
    log.info("airflow-init: metadata DB migrated, admin password written to %s", path)


def ensure_databases(cfg: StackConfig) -> None:
    """Create the roles and databases if missing: docker/postgres-init's script, on the local server."""
    env = {**os.environ, "PGHOST": cfg.pg_host, "PGPORT": str(cfg.pg_port), "POSTGRES_USER": cfg.pg_superuser,
           "AIRFLOW_DB_NAME": cfg.airflow_db, "AIRFLOW_DB_USER": cfg.airflow_db_user,
           "AIRFLOW_DB_PASSWORD": cfg.secrets["AIRFLOW_DB_PASSWORD"], "MLFLOW_DB_NAME": cfg.mlflow_db,
           "MLFLOW_AUTH_DB_NAME": cfg.mlflow_auth_db, "MLFLOW_DB_USER": cfg.mlflow_db_user,
           "MLFLOW_DB_PASSWORD": cfg.secrets["MLFLOW_DB_PASSWORD"]}
    env.pop("PGPASSWORD", None)
    result = subprocess.run(["bash", str(DB_INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise StackError(f"creating the databases on {cfg.pg_host}:{cfg.pg_port} as {cfg.pg_superuser} failed "
                         f"(is PostgreSQL running, with trust auth or PGPASSWORD?):\n{result.stderr.strip()}")
    log.info(result.stdout.strip())


def drop_databases(cfg: StackConfig) -> None:
    """Drop the stack's databases and roles (tests; `bin/stack down --purge`). Ends open sessions first."""
    statements = [f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'
                  for db in (cfg.airflow_db, cfg.mlflow_db, cfg.mlflow_auth_db)]
    statements += [f'DROP ROLE IF EXISTS "{user}"' for user in dict.fromkeys((cfg.airflow_db_user, cfg.mlflow_db_user))]
    args = ["psql", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "--quiet", "-h", cfg.pg_host, "-p", str(cfg.pg_port),
            "-U", cfg.pg_superuser, "-d", "postgres"]
    for statement in statements:
        args += ["-c", statement]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise StackError(f"dropping the stack's databases failed: {result.stderr.strip()}")


def postgres_reachable(host: str = "127.0.0.1", port: int = 5432, timeout_s: float = 2.0) -> bool:
    """True when something accepts TCP connections at host:port (the stack's PostgreSQL)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _read_pids(cfg: StackConfig) -> dict[str, int]:
    path = cfg.state_dir / "pids.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _write_pids(cfg: StackConfig, pids: Mapping[str, int]) -> None:
    path = cfg.state_dir / "pids.json"
    if pids:
        path.write_text(json.dumps(dict(pids), indent=2))
    else:
        path.unlink(missing_ok=True)


def _spawn(cfg: StackConfig, name: str, cmd: list[str], env: Mapping[str, str],
           cwd: Path) -> subprocess.Popen[bytes]:
    with (cfg.log_dir / f"{name}.log").open("ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **env}, cwd=cwd, start_new_session=True)
    _write_pids(cfg, _read_pids(cfg) | {name: process.pid})
    log.info("started %s (pid %s), log %s", name, process.pid, cfg.log_dir / f"{name}.log")
    return process


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 (our own loopback URL)
        return json.loads(response.read() or b"null") if response.status == 200 else None


def health(cfg: StackConfig) -> dict[str, str]:
    """Health of each service as its server reports it: 'healthy', or why not."""
    result: dict[str, str] = {}
    try:
        with urllib.request.urlopen(f"{cfg.mlflow_url}/health", timeout=3) as response:  # noqa: S310
            result[MLFLOW] = "healthy" if response.status == 200 else f"HTTP {response.status}"
    except (OSError, urllib.error.URLError) as exc:
        result[MLFLOW] = f"unreachable ({exc})"
    try:
        report = _get_json(f"{cfg.api_url}/api/v2/monitor/health")
    except (OSError, urllib.error.URLError, ValueError) as exc:
        report = None
        result |= {name: f"api-server unreachable ({exc})" for name in AIRFLOW_SERVICES}
    if isinstance(report, dict):
        result["airflow-api-server"] = (report.get("metadatabase") or {}).get("status") or "unknown"
        for key, name in (("scheduler", "airflow-scheduler"), ("dag_processor", "airflow-dag-processor"),
                          ("triggerer", "airflow-triggerer")):
            result[name] = (report.get(key) or {}).get("status") or "no heartbeat yet"
    return result


def wait_ready(cfg: StackConfig, processes: Mapping[str, subprocess.Popen[bytes]], timeout_s: float) -> None:
    """Poll until every service reports healthy; fail fast when one exits."""
    deadline = time.monotonic() + timeout_s
    status: dict[str, str] = {}
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                log_file = cfg.log_dir / f"{name}.log"
                raise StackError(f"{name} exited with code {process.returncode} during start-up; "
                                 f"last lines of {log_file}:\n{_tail(log_file)}")
        status = health(cfg)
        if all(status.get(name) == "healthy" for name in SERVICES):
            return
        time.sleep(0.5)
    raise StackError(f"not healthy after {timeout_s:.0f}s: {status}; logs in {cfg.log_dir}")


def running(cfg: StackConfig) -> dict[str, int]:
    """The recorded services whose process group is still alive."""
    return {name: pid for name, pid in _read_pids(cfg).items() if group_alive(pid)}


def start(cfg: StackConfig, timeout_s: float = 180.0) -> dict[str, int]:
    """Create the databases, migrate Airflow, start every service and wait until all are healthy.

    On failure everything started is stopped again and StackError carries the failing service's log.
    Returns the process-group ids by service.
    """
    if find_spec("flask_wtf") is None:
        raise StackError("MLflow's basic-auth app needs Flask-WTF (the mlflow[auth] extra): "
                         "pip install -r requirements.txt -c constraints.txt")
    if alive := running(cfg):
        raise StackError(f"the stack in {cfg.state_dir} is already running ({', '.join(alive)}): "
                         "`bin/stack down` first")
    busy = [port for port in (cfg.api_port, cfg.mlflow_port) if not _port_free(port)]
    if busy:
        raise StackError(f"port(s) {busy} on 127.0.0.1 already in use: set AIRFLOW_API_PORT / MLFLOW_PORT")
    for folder in (cfg.log_dir, cfg.airflow_home, cfg.state_dir / "mlflow" / "artifacts"):
        folder.mkdir(parents=True, exist_ok=True)
    _write_pids(cfg, {})
    ensure_databases(cfg)
    cmds = commands(cfg)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        ini = cfg.state_dir / "mlflow" / "basic_auth.ini"
        ini.write_text(mlflow_auth_ini(cfg.pg_url("postgresql", cfg.mlflow_db_user, cfg.mlflow_auth_db),
                                       cfg.mlflow_admin_user))
        # MLflow migrates its store while Airflow migrates its own: the two slowest steps overlap.
        processes[MLFLOW] = _spawn(cfg, MLFLOW, cmds[MLFLOW], mlflow_server_env(cfg), cwd=cfg.state_dir)
        env = airflow_env(cfg)
        # Only airflow-init sees the admin's password; the api-server reads the file it writes.
        airflow_init({**env, "AIRFLOW_ADMIN_PASSWORD": cfg.secrets["AIRFLOW_ADMIN_PASSWORD"]},
                     log_file=cfg.log_dir / "airflow-init.log")
        for name in AIRFLOW_SERVICES:
            processes[name] = _spawn(cfg, name, cmds[name], env, cwd=REPO)
        wait_ready(cfg, processes, timeout_s)
        mlflow_init(cfg)
    except BaseException:
        stop(cfg)
        raise
    return {name: process.pid for name, process in processes.items()}


def stop(cfg: StackConfig, grace_s: float = 20.0) -> list[str]:
    """SIGTERM every recorded process group, SIGKILL what is left after grace_s. Returns the stopped services."""
    alive = {name: pid for name, pid in _read_pids(cfg).items() if group_alive(pid)}
    # Airflow services first (their tasks still talk to MLflow), MLflow last.
    for _name, pgid in sorted(alive.items(), key=lambda item: item[0] == MLFLOW):
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(group_alive(pgid) for pgid in alive.values()):
        time.sleep(0.2)
    for name, pgid in alive.items():
        if group_alive(pgid):
            log.warning("%s (process group %s) ignored SIGTERM for %.0fs: killing it", name, pgid, grace_s)
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(group_alive(pgid) for pgid in alive.values()):
        time.sleep(0.1)
    _write_pids(cfg, {})
    return list(alive)
