"""A CLI process's start-up without the garbage collector's full passes over the libraries it imports.

A `python -m ml <step>` process on a small window spends most of its time importing (MLflow, pandas, SQLAlchemy).
Those imports allocate millions of objects that live as long as the process, and CPython's cyclic collector walks
all of them again at every full collection it triggers along the way (measured here: `import mlflow` plus its SQLite
store took 2.6 s with the collector on, 2.0 s with it off; a whole step about 1 s less). So the CLI switches
automatic collection off when it starts (`begin`) and switches it back on once MLflow is imported and its client
built (`end`, called by ml.tracking.mlflow_client; a command that works without MLflow calls it before its work, and
the CLI on its way out whatever happened), after `gc.freeze()` has moved everything imported so far into the
permanent generation, which later collections skip. Garbage made meanwhile is kept until then, no longer; start-up
makes little. An Airflow task does the same around its first imports (ct_airflow's PipelineOperator.run_context);
`end` is a no-op in a process that never called `begin` (a test, the model server).
"""

from __future__ import annotations

import gc

_paused = False
_begun = False


def begin() -> None:
    """Pause automatic garbage collection for this process's start-up (the CLI calls it first). Once per process:
    a process that runs task after task (`airflow dags test`) freezes only what its first start-up imported, not
    the garbage later tasks leave (a frozen object is never collected)."""
    global _paused, _begun
    if not _begun and gc.isenabled():
        gc.disable()
        _paused = True
    _begun = True


def end() -> None:
    """Start-up is over: freeze what it imported, collect automatically again. Idempotent."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
