"""Evidently imported beside the drift report step: a child process that renders the HTML report.

Importing Evidently takes about 3.5 s here, more than the drift statistics on a million rows. A drift_report
step started as its own process (`python -m ml drift-report`, an Airflow task: `pays_off`) therefore starts this
child first: it imports Evidently on the second core while the step imports MLflow, opens its run and loads the
stored profiles, then renders the report on the samples the step hands it (two Parquet files beside the
report). The parent adds the banner (ml.drift.report). Should the child fail in any way (it died, answered
nothing, answered an error), the parent renders the report itself, so the step's outcome never depends on it.

A process that runs the steps before it too (`python -m ml run`; `airflow dags test`, which runs every task of
the DAG run in one process) starts the worker when the run starts (`start_early`): Evidently then imports
while the decision's steps run, and the report step finds it ready. An early worker the run never uses (the
contract blocked it) is killed when the process exits.

    python -m ml.drift.report_worker      # reads one job (a JSON line) on stdin, answers one on stdout
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from ml.config import ModelConfig

log = logging.getLogger(__name__)

#: longest wait for the child's answer: the report on 5,000-row samples takes about 1.5 s
ANSWER_TIMEOUT_S = 600.0


class ReportWorker:
    """The child process; `render` hands it one job, `close` ends it (used or not)."""

    def __init__(self) -> None:
        repo_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen([sys.executable, "-m", "ml.drift.report_worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=None, env=env, text=True)

    def render(self, job: dict[str, Any], reference: pd.DataFrame,
               current: pd.DataFrame) -> dict[str, dict[str, Any]] | None:
        """The per-column results of the report the child rendered at job["out"]; None when it could not
        (the caller renders it itself)."""
        out = Path(job["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        files = {"reference": out.with_name(".sample-reference.parquet"),
                 "current": out.with_name(".sample-current.parquet")}
        try:
            reference.to_parquet(files["reference"], index=False)
            current.to_parquet(files["current"], index=False)
            return self._exchange({**job, **{k: str(v) for k, v in files.items()}})
        except (OSError, ValueError) as exc:
            log.warning("drift report: the Evidently process failed (%s); rendering the report here", exc)
            return None
        finally:
            for path in files.values():
                path.unlink(missing_ok=True)
            self.close()

    def _exchange(self, job: dict[str, Any]) -> dict[str, dict[str, Any]]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], ANSWER_TIMEOUT_S)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise OSError(f"no answer (exit code {self.process.poll()})")
        answer = json.loads(line)
        if "error" in answer:
            raise ValueError(answer["error"])
        return answer["columns"]

    def discard(self) -> None:
        """End the child unused, at once (it may be in the middle of importing Evidently)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()  # type: ignore[union-attr]
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        with contextlib.suppress(OSError):
            self.process.stdout.close()  # type: ignore[union-attr]


def pays_off() -> bool:
    """A child is faster only while this process still has MLflow to import and its run to open (about 2 s
    to overlap with the child's 3.5 s); in a process that has imported MLflow or Evidently already
    (`airflow dags test` runs every task in one process) rendering here is faster."""
    return "mlflow" not in sys.modules and "evidently" not in sys.modules


def wanted(config: ModelConfig) -> bool:
    """A drift report step of `config` in this process starts the worker: it renders a report, and the worker pays."""
    return config.drift.report_rows > 0 and pays_off()


#: model name -> the worker started when its run started in this process (start_early), until a report step takes it
_EARLY: dict[str, ReportWorker] = {}


def start_early(config: ModelConfig) -> None:
    """Start the worker of `config`'s drift report now, for a process that runs the steps before it too: Evidently
    imports meanwhile. Nothing when the report is off, Evidently is imported already or a worker is waiting."""
    if config.drift.report_rows <= 0 or "evidently" in sys.modules or config.name in _EARLY:
        return
    worker = _EARLY[config.name] = ReportWorker()
    atexit.register(worker.discard)  # a no-op once the report step has used and closed it


def _take_early(name: str) -> ReportWorker | None:
    worker = _EARLY.pop(name, None)
    if worker is not None and worker.process.poll() is not None:
        worker.close()
        return None
    return worker


@contextlib.contextmanager
def beside(config: ModelConfig | None) -> Iterator[dict[str, Any]]:
    """The drift report step's keyword arguments with a report worker ({} for None: another step): the one started
    early in this process, else one started now where it pays off (`wanted`); none with the report off. The
    worker is ended on the way out, whatever happened."""
    worker = None
    if config is not None:
        worker = _take_early(config.name) or (ReportWorker() if wanted(config) else None)
    try:
        yield {"report_worker": worker} if worker is not None else {}
    finally:
        if worker is not None:
            worker.close()


def main() -> int:
    from ml import startup

    answers, sys.stdout = sys.stdout, sys.stderr  # whatever a library prints stays off the answer channel
    startup.begin()
    import evidently  # noqa: F401 - the point of this process: imported while the parent does the rest
    import pandas as pd

    from ml.drift.report import render

    startup.end()

    line = sys.stdin.readline()
    if not line:
        return 0  # the step ended without a report (it failed earlier, or found nothing to compare)
    try:
        job = json.loads(line)
        columns = render(job, pd.read_parquet(job["reference"]), pd.read_parquet(job["current"]))
        answer: dict[str, Any] = {"columns": columns}
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent, which renders it itself
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    answers.write(json.dumps(answer) + "\n")
    answers.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
