"""`python -m ml <step>`: every pipeline step on the command line.

Common flags: --config PATH, --reference PATH, --current PATH, --out DIR, --run-key KEY.
Each command prints ONE JSON document on stdout (logs go to stderr) and exits non-zero on failure
with the message on stderr. Exit codes: 0 success, 1 the step's outcome stops the run (contract
failed, gate failed, deploy rolled back), 2 bad usage or config, 3 unexpected error.

Steps share a run through --run-key. `validate-data` starts a new run when none is given and
remembers it, so `validate-data`, `drift`, `train`... typed one after the other belong together.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ml.errors import ConfigError, CTError

if TYPE_CHECKING:
    from ml.config import ModelConfig
    from ml.state import Step

log = logging.getLogger("ml")

#: Command name -> pipeline step (ml.state.Step values): `validate-data` is the validate step.
STEP_COMMANDS = {"validate-data": "validate", "drift": "drift", "drift-report": "drift_report",
                 "performance": "performance", "decide": "decide", "train": "train", "gates": "gates",
                 "register": "register", "deploy": "deploy", "promote": "promote"}


def step_argv(step: str, config_path: str, run_key: str, reference_path: str | None = None,
              current_path: str | None = None) -> list[str]:
    """The arguments of `python -m ml` that run one step of a run elsewhere (a Kubernetes pod, a Databricks
    job): the contract between the remote operators and this parser, defined next to it."""
    command = next(name for name, value in STEP_COMMANDS.items() if value == step)
    args = [command, "--config", config_path, "--run-key", run_key]
    if reference_path:
        args += ["--reference", reference_path]
    if current_path:
        args += ["--current", current_path]
    return args


def batch_argv(config_path: str, run_key: str, input_path: str | None, output_path: str | None,
               model_uri: str | None = None, expected_sha256: str | None = None) -> list[str]:
    """The arguments of `python -m ml` that score a batch elsewhere (the batch DAG's Kubernetes pod)."""
    args = ["batch", "--config", config_path, "--run-key", run_key]
    for flag, value in (("--input", input_path), ("--output", output_path), ("--model-uri", model_uri),
                        ("--expected-sha256", expected_sha256)):
        if value:
            args += [flag, value]
    return args


def _common(parser: argparse.ArgumentParser, run_key: bool = True) -> None:
    parser.add_argument("--config", required=True, help="model config YAML")
    parser.add_argument("--reference", help="reference window (overrides data.reference)")
    parser.add_argument("--current", help="current window (overrides data.current)")
    parser.add_argument("--out", help="folder to copy the result JSON and reports/artifacts into")
    if run_key:
        parser.add_argument("--run-key", help="the run this step belongs to (default: the latest CLI run)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ml", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, step in STEP_COMMANDS.items():
        p = sub.add_parser(name, help="render Evidently's HTML report of the run's drift (after drift; decides "
                                      "nothing)" if step == "drift_report" else f"run the '{step}' step")
        _common(p)
        if step == "decide":
            p.add_argument("--force-retrain", action="store_true")
        if step == "deploy":
            p.add_argument("--version", help="serve this registered version and move champion to it once it serves "
                                             "(default: the run's registered one)")
    p = sub.add_parser("run", help="the whole pipeline in one process (no Airflow)")
    _common(p)
    p.add_argument("--force-retrain", action="store_true")
    p = sub.add_parser("record", help="build and write the run record of a run")
    _common(p)
    p = sub.add_parser("rollback", help="serve the version champion replaced (or --version) and move champion to it")
    _common(p, run_key=False)
    p.add_argument("--reason", default="manual rollback", help="recorded in the alias ledger")
    p.add_argument("--version", help="the registered version to return to (default: the one champion replaced)")
    p = sub.add_parser("status", help="champion, challenger, alias log and what the local target serves")
    _common(p, run_key=False)
    p = sub.add_parser("batch", help="score a Parquet/CSV dataset with the champion (chunked, bounded memory)")
    _common(p)
    p.add_argument("--input", help="the rows to score (default batch.input_path)")
    p.add_argument("--output", help="a .parquet file or a folder (default batch.output_path)")
    p.add_argument("--model-uri", help="score with this model instead (models:/<name>/<version>, or a file)")
    p.add_argument("--expected-sha256", help="the model file's sha256 (a file --model-uri is refused without "
                                             "a match)")
    p.add_argument("--no-log", action="store_true", help="do not append the predictions to the prediction log")
    p = sub.add_parser("monitor", help="error rate (feedback) and output drift of the served model; "
                                       "exit 1 when retraining is due")
    _common(p, run_key=False)
    p.add_argument("--prediction-log", help="the served model's prediction log (default monitoring.prediction_log)")
    sub.add_parser("serve", help="run the ONNX server (same flags as `python -m ml.serving --help`)",
                   add_help=False)
    _rollout_parsers(sub)
    return parser


def _rollout_parsers(sub: Any) -> None:
    """`shadow-report`, `shadow start|stop`, `canary start|evaluate|watch|promote|rollback` (README "Safe rollout")."""
    p = sub.add_parser("shadow-report", help="compare the champion with its shadow on the logged live traffic")
    _common(p, run_key=False)
    p.add_argument("--since", help="only predictions from this ISO time on")
    p = sub.add_parser("shadow", help="serve a version in shadow beside the champion (local target)")
    _common(p, run_key=False)
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("--version", help="the registered version to shadow (start)")
    p = sub.add_parser("canary", help="let a version answer a share of the traffic; promote or roll back by a test")
    _common(p, run_key=False)
    p.add_argument("action", choices=["start", "evaluate", "watch", "promote", "rollback", "status"])
    p.add_argument("--version", help="the registered version to canary (start)")
    p.add_argument("--fraction", type=float, help="its share of the traffic (default deploy.canary.fraction)")
    p.add_argument("--interval-s", type=float, default=30.0, help="watch: seconds between looks")
    p.add_argument("--timeout-s", type=float, help="watch: give up waiting after this long (the canary stays)")
    p.add_argument("--reason", default="operator's decision", help="promote / rollback: recorded in the ledger")


def _latest_file(name: str) -> Path:
    from ml.tracking import ct_home

    return ct_home() / "runs" / name / "LATEST"


def _run_key(args: argparse.Namespace, config_name: str, new: bool) -> str:
    if getattr(args, "run_key", None):
        key = args.run_key
    elif new:
        key = "cli-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    else:
        latest = _latest_file(config_name)
        if not latest.exists():
            raise ConfigError("no --run-key given and no earlier CLI run: start with `validate-data` or `run`")
        key = latest.read_text().strip()
    latest = _latest_file(config_name)
    latest.parent.mkdir(parents=True, exist_ok=True)
    latest.write_text(key)
    return key


def _copy_out(out: str | None, name: str, result: dict[str, Any], files: list[Path]) -> None:
    if not out:
        return
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    for f in files:
        if f.exists():
            shutil.copy2(f, folder / f.name)


#: Where the command's one JSON document goes while `_json_stdout` routes everything else to stderr.
_result_stream: TextIO | None = None


@contextlib.contextmanager
def _json_stdout() -> Iterator[None]:
    """stdout carries the result document only: whatever else is printed meanwhile (MLflow writes "View run
    ... at: <url>" to stdout whenever a run on a tracking server ends) goes to stderr with the logs."""
    global _result_stream
    previous, _result_stream = _result_stream, sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _result_stream = previous


def _emit(result: dict[str, Any]) -> None:
    stream = _result_stream or sys.stdout
    stream.write(json.dumps(result, indent=2, default=str) + "\n")
    stream.flush()


def _status(config: Any) -> dict[str, Any]:
    from ml.deploy.local import local_server_status
    from ml.registry import CHALLENGER, CHAMPION, alias_log, ensure_registered_model, version_by_alias
    from ml.tracking import mlflow_client, tracking_uri

    client = mlflow_client()
    ensure_registered_model(client, config.name)
    aliases = {}
    for alias in (CHAMPION, CHALLENGER):
        mv = version_by_alias(client, config.name, alias)
        aliases[alias] = str(mv.version) if mv else None
    return {"model": config.name, "tracking_uri": tracking_uri(), **aliases,
            "alias_log": alias_log(client, config.name)[-10:], "local_server": local_server_status(config.name)}


def _rollout_command(config: Any, args: argparse.Namespace) -> dict[str, Any]:
    from ml import rollout_checks
    from ml.deploy import canary

    if args.command == "shadow-report":
        from ml.shadow import compare_shadow

        return compare_shadow(config, args.current, args.since).to_dict()
    needs_version = args.action == "start" and not args.version
    if needs_version:
        raise ConfigError(f"{args.command} start needs --version N (a registered version)")
    if args.command == "shadow":
        done = canary.start_shadow(config, args.version) if args.action == "start" else canary.stop_shadow(config)
        return done.to_dict()
    if args.action == "start":
        return canary.start_canary(config, args.version, args.fraction).to_dict()
    if args.action == "evaluate":
        return rollout_checks.evaluate_canary(config, args.current).to_dict()
    if args.action == "watch":
        return rollout_checks.watch_canary(config, args.interval_s, args.timeout_s, args.current).to_dict()
    if args.action == "status":
        running = canary.read_rollout(config.name)
        return running.to_dict() if running is not None else {"model": config.name, "rollout": None}
    return rollout_checks.end_canary(config, args.action, args.reason).to_dict()


def _rollback(config: Any, reason: str, version: str | None) -> dict[str, Any]:
    from ml.pipeline import rollback

    record, promotion = rollback(config, reason, version=version)
    return {"model": config.name, "run_key": record.run_key, "status": record.status,
            "rolled_back_from": promotion.previous, "champion": promotion.version, "move": promotion.move.to_dict(),
            "deployment": record.deployment}


def main(argv: list[str] | None = None) -> int:
    from ml import startup

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # hand over to the server's own CLI, flags untouched
        os.execv(sys.executable, [sys.executable, "-m", "ml.serving", *argv[1:]])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "urllib3", "httpx", "evidently", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    startup.begin()  # until MLflow is imported (ml.tracking.mlflow_client), or the command's work begins
    try:
        with _json_stdout():
            return _dispatch(args)
    except CTError as exc:
        log.error("%s", exc)
        sys.stderr.write(f"error: {exc}\n")
        return 2 if isinstance(exc, ConfigError) else 1
    except Exception as exc:  # a bug or an infrastructure failure: keep the traceback in the log
        log.exception("unexpected error")
        sys.stderr.write(f"error: {type(exc).__name__}: {exc}\n")
        return 3
    finally:
        startup.end()  # a command that failed before MLflow (a bad config) leaves collection on, in-process too


def entrypoint() -> None:
    """The wheel's `ct-ml` entry point (a Databricks python_wheel_task calls it in-process, with the
    task's parameters as sys.argv[1:]). A failed step raises SystemExit with its exit code, so the
    task run fails; success returns normally."""
    code = main()
    if code:
        raise SystemExit(code)


def check_config_digest(path: str) -> None:
    """A step started by Airflow elsewhere (a pod, a Databricks job) gets CT_CONFIG_SHA256, the sha256 of the
    config file Airflow read: refuse to run on another file (a stale image, an old upload)."""
    expected = os.environ.get("CT_CONFIG_SHA256")
    if not expected:
        return
    from ml.config import config_sha256

    try:
        actual = config_sha256(path)
    except OSError:
        return  # load_config names the missing file
    if actual != expected:
        raise ConfigError(f"{path} is not the config Airflow validated (sha256 {actual}, expected {expected}): "
                          "upload, bake or mount the same file")


def _served_model_command(config: Any, args: argparse.Namespace) -> dict[str, Any]:
    """`batch` (score a dataset with the champion) or `monitor` (judge the served model's traffic)."""
    if args.command == "batch":
        from ml.batch import score_batch

        return score_batch(config, args.input, args.output, run_key=args.run_key, model_uri=args.model_uri,
                           expected_sha256=args.expected_sha256,
                           log_predictions=False if args.no_log else None).to_dict()
    from ml.monitor import check_serving

    return check_serving(config, prediction_log=args.prediction_log).to_dict()


def _dispatch(args: argparse.Namespace) -> int:
    from ml.config import load_config

    check_config_digest(args.config)
    config = load_config(args.config).with_data(args.reference, args.current)
    if args.command not in STEP_COMMANDS and args.command not in ("run", "record"):
        from ml import startup

        startup.end()  # not a pipeline step: its start-up ends here (ml.startup), whatever it reads next
    if args.command == "status":
        _emit(_status(config))
        return 0
    if args.command == "rollback":
        _emit(_rollback(config, args.reason, args.version))
        return 0
    if args.command in ("batch", "monitor"):
        document = _served_model_command(config, args)
        _emit(document)
        _copy_out(args.out, args.command, document, [])
        return 0
    if args.command in ("shadow-report", "shadow", "canary"):
        document = _rollout_command(config, args)
        _emit(document)
        return _failed(f"{args.command} {getattr(args, 'action', '')} failed: {document['steps'][-1]['detail']}"
                       if document.get("status") == "failed" else None)

    from ml.pipeline import deploy_version, run_pipeline
    from ml.record import finish_run
    from ml.state import Step
    from ml.tracking import open_run

    if args.command == "run":
        key = _run_key(args, config.name, new=True)
        record = run_pipeline(config, key, force_retrain=args.force_retrain)
        _emit(record.to_dict())
        _copy_out(args.out, "run_record", record.to_dict(), [Path(record.drift.get("report") or "")])
        return _failed(record.failure())
    if args.command == "deploy" and args.version:
        record, deployed = deploy_version(config, args.version)
        _emit({"run_key": record.run_key, **deployed.to_dict()})
        return _failed(None if deployed.ok else f"deploy {deployed.status}: {deployed.detail}")
    step = Step(STEP_COMMANDS.get(args.command, args.command)) if args.command != "record" else None
    key = _run_key(args, config.name, new=(step is Step.VALIDATE))
    if step is None:
        record = finish_run(open_run(config, key))
        _emit(record.to_dict())
        _copy_out(args.out, "run_record", record.to_dict(), [])
        return _failed(record.failure())
    return _step_command(args, config, step, key)


def _step_command(args: argparse.Namespace, config: ModelConfig, step: Step, key: str) -> int:
    """One pipeline step: refused before an MLflow run is opened for it when another run holds the model's
    lease (run_step checks again, under the lock); its result as JSON on stdout, `--out` copies."""
    from ml.drift.report_worker import beside
    from ml.locks import check_lease
    from ml.pipeline import run_step
    from ml.state import SIDE_STEPS, RunState, Step
    from ml.tracking import open_run

    if step not in SIDE_STEPS:
        check_lease(config.name, key)
    with beside(config if step is Step.DRIFT_REPORT else None) as kwargs:  # Evidently imports meanwhile
        ctx = open_run(config, key)
        kwargs |= {"force_retrain": args.force_retrain} if step is Step.DECIDE else {}
        try:
            result = run_step(step, ctx, **kwargs).result
        except CTError:
            stored = RunState.load(ctx).record(step)
            if stored is not None and stored.result is not None:  # the outcome (a rolled-back deploy) as JSON
                _emit({"run_key": key, **stored.result.to_dict()})
            raise
    document = {"run_key": key, **result.to_dict()}
    _emit(document)
    files = [ctx.work_dir / "reports" / "drift_report.html"] if step is Step.DRIFT_REPORT else []
    if step is Step.TRAIN:
        files = [ctx.work_dir / "challenger" / "model.onnx", ctx.work_dir / "challenger" / "holdout.parquet"]
    _copy_out(args.out, args.command, document, files)
    return 0


def _failed(message: str | None) -> int:
    if message:
        sys.stderr.write(f"error: {message}\n")
        return 1
    return 0
