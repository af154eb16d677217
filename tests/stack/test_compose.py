"""docker-compose.yaml checked at the boundary (no Docker engine here): against the Compose JSON schema after
Compose's own variable interpolation, for the security properties it promises (secrets only from .env,
loopback-only ports, health checks that dependencies wait on, non-root and read-only containers), and for
agreeing with the native stack (stack/native.py) that `make stack` runs.

compose_spec.json is the Compose specification's JSON schema exactly as docker-compose 1.29.2 ships it
(compose/config/compose_spec.json; the schema Debian's `docker-compose config` validates with), vendored so
the test needs no network. Where that `docker-compose` is installed, its own `config -q` runs as well.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from copy import deepcopy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from stack.native import (
    AIRFLOW_SETTINGS,
    MLFLOW_SERVER_OPTIONS,
    SECRET_NAMES,
    StackConfig,
    airflow_env,
    commands,
    dotenv_text,
    generate_secrets,
    mlflow_auth_ini,
    mlflow_server_env,
    mlflow_serving_env,
    read_env_file,
)
from tests.conftest import REPO

HERE = Path(__file__).parent
COMPOSE_FILE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
SCHEMA = HERE / "compose_spec.json"
SCHEMA_SHA256 = "0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac"
ALL_SECRETS = ("POSTGRES_PASSWORD", *SECRET_NAMES)
ONE_SHOT = {"airflow-init", "mlflow-init"}
DOCKERFILES = {"ct-airflow:local": REPO / "docker" / "airflow.Dockerfile",
               "ct-mlflow:local": REPO / "docker" / "mlflow.Dockerfile",
               "ct-serving:local": REPO / "ml" / "serving" / "Dockerfile"}

# Compose's interpolation syntax: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err},
# ${VAR:+alt}, ${VAR+alt}.
_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
                  r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")


class MissingVariable(ValueError):
    """A ${VAR:?message} (or ${VAR?message}) whose variable is unset or empty."""


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable substitution, applied to every string of the loaded file."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        op, arg, current = match["op"], match["arg"] or "", env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if unset else current
        if op in (":?", "?"):
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return current
        if op in (":+", "+"):
            return "" if unset else arg
        return current or ""

    return _VAR.sub(substitute, value)


def variables(text: str) -> Iterator[tuple[str, str | None, str | None]]:
    """(name, operator, argument) of every interpolation in a compose text ($$ escapes skipped)."""
    for match in _VAR.finditer(text):
        if not match["escaped"]:
            yield match["braced"] or match["named"], match["op"], match["arg"]


def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_text() -> str:
    """docker-compose.yaml without its comment lines (Compose interpolates values, never comments)."""
    return "\n".join(line for line in COMPOSE_FILE.read_text().splitlines() if not line.lstrip().startswith("#"))


_FILLED = generate_secrets() | {"POSTGRES_PASSWORD": "pg-secret"}


def example_env() -> dict[str, str]:
    """.env.example with every secret filled in: what a user's .env looks like."""
    return read_env_file(ENV_EXAMPLE) | _FILLED


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return interpolate(raw_compose(), example_env())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _schema_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_vendored_schema_is_the_unmodified_official_file():
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256
    assert json.loads(SCHEMA.read_text())["title"] == "Compose Specification"


def test_compose_file_is_valid_against_the_compose_schema(compose):
    assert _schema_errors(compose) == []


def test_the_schema_check_rejects_what_compose_would(compose):
    broken = deepcopy(compose)
    broken["services"]["mlflow"]["healthcheck"]["intervall"] = "10s"
    broken["services"]["serving"]["depends_on"]["mlflow"]["condition"] = "service_ready"
    broken["services"]["postgres"]["ports"] = "5432:5432"
    errors = _schema_errors(broken)
    assert len(errors) >= 3, errors
    assert any("intervall" in e for e in errors) and any("service_ready" in e for e in errors)


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="Debian's docker-compose is not installed (apt-get install docker-compose); "
                           "the schema test above covers the same check")
def test_docker_compose_config_accepts_the_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in example_env().items()))
    ok = subprocess.run(["docker-compose", "--project-directory", str(REPO), "-f", str(COMPOSE_FILE),
                         "--env-file", str(env_file), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    env_file.write_text("".join(f"{k}={v}\n" for k, v in example_env().items() if k != "AIRFLOW_JWT_SECRET"))
    refused = subprocess.run(["docker-compose", "--project-directory", str(REPO), "-f", str(COMPOSE_FILE),
                              "--env-file", str(env_file), "config", "-q"], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode != 0 and "AIRFLOW_JWT_SECRET" in refused.stderr


@pytest.mark.parametrize("secret", ALL_SECRETS)
def test_compose_refuses_to_start_without_each_secret(secret):
    env = example_env()
    for missing in ({k: v for k, v in env.items() if k != secret}, env | {secret: ""}):
        with pytest.raises(MissingVariable, match=f"^{secret}: set {secret} in .env"):
            interpolate(raw_compose(), missing)


def test_secrets_come_only_from_env_without_defaults():
    text = compose_text()
    used = {}
    for name, op, arg in variables(text):
        used.setdefault(name, set()).add(op)
        if name in ALL_SECRETS:
            assert op == ":?" and arg, f"${{{name}}} must be ${{{name}:?message}}: no default, no empty value"
    assert set(ALL_SECRETS) <= set(used), f"secrets never used: {set(ALL_SECRETS) - set(used)}"
    # nothing secret-looking is written literally in the file
    for service, spec in raw_compose()["services"].items():
        for key, value in _environment(spec).items():
            if re.search(r"(PASSWORD|SECRET|SECRET_KEY|FERNET_KEY)$", key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), f"{service}.{key} = {value!r}"
        for line in spec.get("command") or []:
            assert not re.search(r"password|secret", str(line), re.I), f"{service}: secret on the command line"
    assert "admin:admin@" not in text and not re.search(r"PASSWORD\s*[:=]\s*['\"]?admin", text, re.I)


def test_env_example_documents_every_variable_with_empty_secrets():
    documented = read_env_file(ENV_EXAMPLE)
    used = {name for name, _op, _arg in variables(compose_text())}
    assert used == set(documented), f"undocumented: {used - set(documented)}, unused: {set(documented) - used}"
    assert all(documented[name] == "" for name in ALL_SECRETS), "secrets in .env.example must be left empty"
    filled = read_env_file_text(dotenv_text(ENV_EXAMPLE.read_text()))
    assert all(len(filled[name]) >= 32 for name in ALL_SECRETS) and filled["AIRFLOW_API_PORT"] == "8080"
    assert ".env" in (REPO / ".gitignore").read_text().split()
    dockerignore = (REPO / ".dockerignore").read_text().split()
    assert {".env", ".venv", ".git", ".ct"} <= set(dockerignore)


def test_read_env_file_like_compose(tmp_path):
    """Comments, blank lines, `export ` and surrounding quotes as Compose reads .env; no expansion."""
    path = tmp_path / ".env"
    path.write_text("# comment\n  # indented comment\n\nA=1\nB = two\nC=\"quoted value\"\nD='single'\n"
                    "export E=exported\nF=\nG\nH=a=b=c\nI=abc#def\nJ=abc # inline\nK=\"with # hash\"\n"
                    "L=${A}x\nM=tok$en\n#N=commented\n")
    assert read_env_file(path) == {"A": "1", "B": "two", "C": "quoted value", "D": "single", "E": "exported",
                                   "F": "", "H": "a=b=c", "I": "abc#def", "J": "abc", "K": "with # hash",
                                   "L": "${A}x", "M": "tok$en"}
    assert read_env_file(tmp_path / "missing.env") == {}


def read_env_file_text(text: str) -> dict[str, str]:
    return {k: v for k, _, v in (line.partition("=") for line in text.splitlines()) if _ and not k.startswith("#")}


def test_published_ports_are_bound_to_loopback(services):
    published = {}
    for name, spec in services.items():
        for port in spec.get("ports", []):
            if isinstance(port, dict):
                host_ip, host_port = port.get("host_ip"), port.get("published")
            else:
                parts = str(port).split(":")
                assert len(parts) == 3, f"{name}: {port!r} publishes on every interface; use 127.0.0.1:HOST:CONTAINER"
                host_ip, host_port = parts[0], parts[1]
            assert host_ip == "127.0.0.1", f"{name}: {port!r}"
            published[name] = int(host_port)
        assert spec.get("network_mode") != "host", name
    assert published == {"airflow-api-server": 8080, "mlflow": 5000, "serving": 8808}


def test_services_have_healthchecks_and_dependencies_wait_on_them(services):
    for name, spec in services.items():
        if name in ONE_SHOT:
            assert spec.get("restart") == "no" and "healthcheck" not in spec, name
            continue
        check = spec.get("healthcheck") or {}
        assert check.get("test") and check["test"][0] in ("CMD", "CMD-SHELL") and not check.get("disable"), name
        assert spec.get("restart") == "unless-stopped", name
    for name, spec in services.items():
        depends = spec.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions, not a plain list"
        for target, rule in depends.items():
            expected = "service_completed_successfully" if target in ONE_SHOT else "service_healthy"
            assert rule == {"condition": expected}, f"{name} -> {target}: {rule}"
    airflow = [name for name in services if name.startswith("airflow-") and name not in ONE_SHOT]
    assert sorted(airflow) == ["airflow-api-server", "airflow-dag-processor", "airflow-scheduler",
                               "airflow-triggerer"]
    for name in airflow:
        assert {"postgres", "mlflow", "airflow-init"} <= set(services[name]["depends_on"]), name
    assert set(services["airflow-init"]["depends_on"]) == {"postgres"}
    assert "airflow-api-server" in services["airflow-scheduler"]["depends_on"]  # tasks call the execution API
    assert set(services["mlflow"]["depends_on"]) == {"postgres"} and set(services["mlflow-init"]["depends_on"]) == {
        "mlflow"}
    assert set(services["serving"]["depends_on"]) == {"mlflow", "mlflow-init"}  # its login exists before it starts


def test_containers_run_unprivileged_and_read_only_where_they_can(services):
    for name, spec in services.items():
        assert str(spec.get("user", "")).split(":")[0] not in ("root", "0"), name
        assert not spec.get("privileged"), name
        assert "no-new-privileges:true" in spec.get("security_opt", []), name
        assert spec.get("cap_drop") == ["ALL"] and not spec.get("cap_add"), name
        for volume in spec.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else str(volume).split(":")[0]
            assert "docker.sock" not in source, name
        image = spec.get("image", "")
        if "build" in spec:
            assert image in DOCKERFILES and spec["build"]["dockerfile"] == str(
                DOCKERFILES[image].relative_to(REPO)), name
        else:
            assert name == "postgres" and spec["user"] == "postgres", f"{name} runs an image we do not build"
    for name in ("mlflow", "serving"):
        assert services[name]["read_only"] is True and "/tmp" in services[name]["tmpfs"], name
    # bind mounts are read-only; state lives in named volumes
    for name, spec in services.items():
        for volume in spec.get("volumes", []):
            if isinstance(volume, str) and volume.startswith("./"):
                assert volume.endswith(":ro"), f"{name}: {volume}"
    airflow_mounts = services["airflow-scheduler"]["volumes"]
    assert {"type": "volume", "source": "predictions", "target": "/opt/ct/predictions", "read_only": True,
            "volume": {"nocopy": True}} in airflow_mounts


def test_serving_gets_its_read_only_login_never_the_admin(services):
    """Least privilege: only Airflow (which registers and promotes) and mlflow-init hold the MLflow admin's
    password; the model server logs in as MLFLOW_SERVING_USER, whom mlflow-init grants READ."""
    env = example_env()
    admin_password = env["MLFLOW_ADMIN_PASSWORD"]
    holders = {name for name, spec in services.items() if admin_password in _environment(spec).values()}
    assert holders == {"mlflow", "mlflow-init", "airflow-init", *(n for n in services if n.startswith("airflow-"))}
    serving = _environment(services["serving"])
    assert serving["MLFLOW_TRACKING_USERNAME"] == "ct-serving" != env["MLFLOW_ADMIN_USER"]
    assert serving["MLFLOW_TRACKING_PASSWORD"] == env["MLFLOW_SERVING_PASSWORD"] != admin_password
    init = services["mlflow-init"]
    assert init["command"] == ["python", "-m", "stack", "mlflow-init"]
    assert _environment(init)["MLFLOW_SERVING_USER"] == serving["MLFLOW_TRACKING_USERNAME"]
    assert _environment(init)["MLFLOW_SERVING_PASSWORD"] == serving["MLFLOW_TRACKING_PASSWORD"]
    assert _environment(init)["CT_MODEL_NAME"] == serving["CT_MODEL_URI"].removeprefix("models:/").split("@")[0]
    # the native stack makes the same login (stack.native.mlflow_init) and hands servers only that
    cfg = StackConfig(home=Path("/nonexistent"), secrets=generate_secrets())
    native = mlflow_serving_env(cfg)
    assert native["MLFLOW_TRACKING_USERNAME"] == "ct-serving"
    assert native["MLFLOW_TRACKING_PASSWORD"] == cfg.secrets["MLFLOW_SERVING_PASSWORD"]
    assert cfg.secrets["MLFLOW_SERVING_PASSWORD"] != cfg.secrets["MLFLOW_ADMIN_PASSWORD"]


def _final_user(dockerfile: Path) -> str | None:
    users = re.findall(r"^USER\s+(\S+)", dockerfile.read_text(), re.M)
    return users[-1] if users else None


@pytest.mark.parametrize("dockerfile", [*DOCKERFILES.values(), REPO / "docker" / "ml.Dockerfile"],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfiles_run_as_non_root_with_pinned_inputs(dockerfile):
    text = dockerfile.read_text()
    user = _final_user(dockerfile)
    assert user is not None and user.split(":")[0] not in ("root", "0"), f"final USER is {user!r}"
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M) + re.findall(r"^ARG\s+\w+_IMAGE=(\S+)", text, re.M)
    assert bases and all(":" in b and not b.endswith(":latest") for b in bases if not b.startswith("$")), bases
    assert "-c /tmp/" in text and "constraints.txt" in text, "pip installs must be constrained by constraints.txt"
    code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if re.search(r"PASSWORD|SECRET|FERNET", line)], "no secrets baked into images"
    assert "COPY . " not in text and "ADD " not in text, "copy named folders only"


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]+\])?==(\S+)", line.strip())
        if match:
            pins[match[1].lower()] = match[2]
    return pins


def test_images_use_the_versions_the_venv_is_tested_with():
    requirements = _pins(REPO / "requirements.txt")
    constraints = _pins(REPO / "constraints.txt")
    airflow_dockerfile = DOCKERFILES["ct-airflow:local"].read_text()
    base = re.search(r"^ARG AIRFLOW_IMAGE=apache/airflow:slim-(\S+)-python(\S+)$", airflow_dockerfile, re.M)
    assert base and base[1] == requirements["apache-airflow"] and base[2] == "3.11"
    assert f'"apache-airflow=={requirements["apache-airflow"]}"' in airflow_dockerfile
    for name, version in _pins(REPO / "docker" / "requirements-mlflow.txt").items():
        assert constraints[name] == version, f"{name}: mlflow image pins {version}, venv has {constraints[name]}"
    assert constraints["flask-wtf"], "MLflow's basic-auth app needs Flask-WTF in the venv too"
    postgres = raw_compose()["services"]["postgres"]["image"]
    assert postgres.startswith("postgres:15"), "the native stack is tested on PostgreSQL 15"


def _environment(spec: Mapping[str, Any]) -> dict[str, Any]:
    env = spec.get("environment") or {}
    return dict(env) if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def test_native_stack_runs_the_same_settings(services, tmp_path):
    """stack/native.py is docker-compose.yaml as local processes: same settings, where hosts and paths allow."""
    cfg = StackConfig(home=tmp_path, secrets=generate_secrets())
    native = airflow_env(cfg)
    composed = {name: _environment(services[name]) for name in services}
    common = composed["airflow-scheduler"]
    assert all(composed[name] == common for name in services if name.startswith("airflow-") and name not in ONE_SHOT)
    assert composed["airflow-init"] == common | {"AIRFLOW_ADMIN_PASSWORD": example_env()["AIRFLOW_ADMIN_PASSWORD"]}
    for key, value in AIRFLOW_SETTINGS.items():
        assert native[key] == value and common[key] == value, key
    # where the images set it (code paths) or compose alone needs it (container health endpoints)
    native_only = {"AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__PLUGINS_FOLDER", "PYTHONPATH"}
    compose_only = {"AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK", "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST",
                    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT", "CT_SCHEDULE"}
    assert set(native) - native_only == set(common) - compose_only
    assert native["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == common["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]
    assert native["AIRFLOW__API__BASE_URL"] == common["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:8080"
    assert native["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].endswith(":8080/execution/")
    assert common["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-api-server:8080/execution/"
    assert native["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].split("://")[0] == \
        common["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].split("://")[0] == "postgresql+psycopg2"
    # the Airflow image puts the code where the native stack finds it in the checkout
    dockerfile = DOCKERFILES["ct-airflow:local"].read_text()
    for key, folder in (("AIRFLOW__CORE__DAGS_FOLDER", "dags"), ("AIRFLOW__CORE__PLUGINS_FOLDER", "plugins")):
        assert native[key] == str(REPO / folder) and f"{key}=/opt/ct/{folder}" in dockerfile
    assert "PYTHONPATH=/opt/ct:/opt/ct/plugins" in dockerfile and "WORKDIR /opt/ct" in dockerfile

    native_cmds = commands(cfg)
    for name in ("airflow-scheduler", "airflow-triggerer", "airflow-dag-processor"):
        native_args = native_cmds[name][native_cmds[name].index("airflow") + 1:]
        assert services[name]["command"] == native_args, name
    mlflow_cmd = services["mlflow"]["command"]
    native_mlflow = native_cmds["mlflow"]
    for option in MLFLOW_SERVER_OPTIONS:
        assert option in mlflow_cmd and option in native_mlflow, option
    assert _option(mlflow_cmd, "--workers") == _option(native_mlflow, "--workers") == str(cfg.mlflow_workers)
    assert _option(mlflow_cmd, "--backend-store-uri") == "postgresql://mlflow@postgres:5432/mlflow"
    assert _option(native_mlflow, "--backend-store-uri") == cfg.pg_url("postgresql", "mlflow", "mlflow")
    assert set(mlflow_server_env(cfg)) - {"MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"} == set(
        composed["mlflow"])
    ini = "".join(line + "\n" for line in (REPO / "docker" / "mlflow" / "basic_auth.ini").read_text().splitlines()
                  if not line.startswith("#"))
    assert ini == mlflow_auth_ini("postgresql://mlflow@postgres:5432/mlflow_auth", "admin")


def _option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_postgres_init_script_gets_what_it_reads(services):
    script = (REPO / "docker" / "postgres-init" / "10-ct-databases.sh").read_text()
    reads = set(re.findall(r"\$\{([A-Z_]+)", script))
    given = set(_environment(services["postgres"]))
    assert reads <= given, f"the init script reads {reads - given}, which the postgres service does not set"
    assert "./docker/postgres-init:/docker-entrypoint-initdb.d:ro" in services["postgres"]["volumes"]
    assert _environment(services["postgres"])["AIRFLOW_DB_USER"] in \
        _environment(services["airflow-scheduler"])["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
