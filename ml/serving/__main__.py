"""`python -m ml.serving`: verify the model, then run uvicorn (the container's and the local deployer's
entrypoint).

The model is resolved and verified once in this process before any socket is opened, so a missing,
tampered or non-self-contained file ends the process with exit code 3 and one log line naming the
file and both sha256 values. With CT_WORKERS > 1 the workers load the already verified local file
(its sha256 pinned), and share prometheus_client's multiprocess folder (PROMETHEUS_MULTIPROC_DIR, a
fresh one per start) so /metrics covers all of them. Each worker ends when this supervisor ends, even by
SIGKILL (Linux: prctl PR_SET_PDEATHSIG; elsewhere a thread polling the parent pid).

The sockets are opened here, before uvicorn runs (ml.serving.handoff): the public one, with
`--reuse-port 1` in the port's reuseport group so the next version can start beside this server, and with
`--smoke-port` a private loopback one for the smoke test.

Exit codes: 0 clean shutdown, 2 invalid settings, 3 model refused, 1 server failed (e.g. port in use).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml.serving import handoff
from ml.serving.app import SUPERVISOR_ENV, configure_logging, create_app
from ml.serving.model import ModelLoadError, Scorer, resolve_model
from ml.serving.settings import Settings, SettingsError
from ml.serving.variants import verify_variants

log = logging.getLogger("ml.serving")

EXIT_SETTINGS = 2
EXIT_MODEL_REFUSED = 3


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit code."""
    try:
        settings = Settings.from_args(argv, os.environ)
    except SettingsError as exc:
        configure_logging()
        log.error("invalid settings: %s", exc)
        return EXIT_SETTINGS
    configure_logging(settings.log_level)
    try:
        loaded = resolve_model(settings)
        verify_variants(settings, Scorer(loaded.model, loaded.version))
    except ModelLoadError as exc:
        log.error("%s", exc)
        return EXIT_MODEL_REFUSED
    if settings.prediction_log_dir is None:
        log.warning("prediction logging disabled: CT_PREDICTION_LOG_DIR is not set, so this server's traffic "
                    "will not reach the next drift check and /feedback answers 503")

    import uvicorn

    try:
        sockets = _listen(settings)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror or exc)
        return 1
    options = {"host": settings.host, "port": settings.port, "log_config": None, "access_log": False,
               "server_header": False, "lifespan": "on", "loop": "auto", "http": "auto",
               "timeout_graceful_shutdown": 30, "timeout_keep_alive": settings.timeout_keep_alive_s,
               "limit_concurrency": settings.limit_concurrency, "backlog": handoff.BACKLOG,
               "h11_max_incomplete_event_size": settings.max_incomplete_event_bytes}
    log.info("starting %d worker(s) on http://%s:%d%s", settings.workers, settings.host, settings.port,
             f" (smoke test on port {settings.smoke_port})" if settings.smoke_port else "")
    if settings.workers == 1:
        server = uvicorn.Server(uvicorn.Config(create_app(settings, loaded), **options))
        # uvicorn re-raises the SIGTERM/SIGINT it shut down on, once it has drained; with these
        # handlers in place that ends in `return 0`: a graceful stop is a clean exit, not a kill.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: log.info("stopped by signal %d", signum))
        if settings.reuse_port:
            handoff.install(sockets[0])
        server.run(sockets=sockets)
        return 0 if server.started else 1
    pinned = settings.with_model(loaded.path, loaded.sha256, loaded.version)
    del loaded  # the workers load the verified file themselves
    return _run_workers(pinned, sockets, options)


def _listen(settings: Settings) -> list[socket.socket]:
    """The public socket, and the private smoke-test one when asked for (OSError when either cannot bind)."""
    sockets = [handoff.listen(settings.host, settings.port, reuse_port=settings.reuse_port)]
    if settings.smoke_port:
        try:
            sockets.append(handoff.listen(handoff.smoke_host(settings.host), settings.smoke_port))
        except OSError:
            sockets[0].close()
            raise
    return sockets


def _run_workers(settings: Settings, sockets: list[socket.socket], options: dict[str, Any]) -> int:
    """CT_WORKERS > 1: uvicorn's supervisor spawns the workers on the sockets opened here; `settings` names
    the verified local file."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    # Workers are spawned processes that call create_app(): hand them the verified file, pinned, and
    # prometheus_client's multiprocess folder: fresh and empty for every start (under CT_METRICS_DIR if
    # set), named before any worker imports prometheus_client, removed when the server stops.
    try:
        if settings.metrics_dir is not None:
            settings.metrics_dir.mkdir(parents=True, exist_ok=True)
        metrics_dir = Path(tempfile.mkdtemp(prefix="ct-serving-metrics-", dir=settings.metrics_dir))
    except OSError as exc:
        log.error("cannot create the metrics folder of the workers (CT_METRICS_DIR=%s): %s", settings.metrics_dir,
                  exc)
        return 1
    os.environ.update(settings.to_env())
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ[SUPERVISOR_ENV] = str(os.getpid())  # each worker ends when this process does (die_with_supervisor)
    config = uvicorn.Config("ml.serving.app:create_app", factory=True, workers=settings.workers, **options)

    class Supervisor(Multiprocess):
        """uvicorn's supervisor, which queues SIGUSR1/SIGUSR2 for its `handle_<name>` methods: the public
        socket the workers share is steered here (ml.serving.handoff)."""

        def handle_usr1(self) -> None:
            if settings.reuse_port:
                handoff.on_signal(sockets[0], handoff.TAKE_SIGNAL)

        def handle_usr2(self) -> None:
            if settings.reuse_port:
                handoff.on_signal(sockets[0], handoff.PIN_SIGNAL)

    try:
        Supervisor(config, sockets=sockets).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
