"""Process liveness, the one place that asks the kernel whether a pid (or a process group) still runs.

Used by the local deploy target (is the recorded server still up?), the serving metrics (is the worker
that wrote these numbers still alive?) and the native stack (are the service groups gone?).
`alive`/`group_alive` use the standard library only (the serving image imports them); `start_time` and
the owner tags (which process holds a model's lock or runs a step) use psutil.
"""

from __future__ import annotations

import os


def _reap(pid: int) -> bool:
    """Reap `pid` if it is an exited child of this process; True when it was (it is gone now)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: nothing to reap
        return False
    return done != 0


def _zombie(pid: int) -> bool:
    """Whether `pid` has exited and only waits for its parent to collect it (Linux: state Z in /proc/<pid>/stat;
    elsewhere unknown: False)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read()
    except OSError:
        return False
    return fields[fields.rfind(b")") + 2:][:1] == b"Z"  # the state follows the command name, which may hold ')'


def alive(pid: int) -> bool:
    """True while process `pid` runs. An exited child of ours (a zombie) is reaped and counts as gone, and so
    does another process's zombie: a server a finished CLI command started is reparented, and until PID 1 collects
    it (at once under systemd, seconds later under some container inits, never under a bare one) it has already
    stopped. A process of another user counts as alive (we may not signal it, but it runs)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _reap(pid) and not _zombie(pid)


def group_alive(pgid: int) -> bool:
    """True while any process of the group `pgid` exists (its leader reaped first if it is our zombie)."""
    if pgid <= 0:
        return False
    _reap(pgid)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch, as the kernel reports it), None if it is gone.
    A pid and its start time name one process: a pid reused later has another start time."""
    import psutil

    try:
        return round(psutil.Process(pid).create_time(), 2)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return 0.0


def owner_tag(pid: int | None = None) -> str:
    """`host:pid:start` of this process (or `pid`): which process holds a lock or runs a step."""
    import socket

    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{start_time(pid)}"


def owner_alive(tag: str) -> bool | None:
    """Whether the process an `owner_tag` names still runs: None when it ran on another host (unknowable)."""
    import socket

    parts = tag.rsplit(":", 2)
    if len(parts) != 3:
        return False
    host, pid_text, started = parts
    if host != socket.gethostname():
        return None
    try:
        pid, recorded = int(pid_text), float(started) if started != "None" else None
    except ValueError:
        return False
    actual = start_time(pid) if alive(pid) else None
    return actual is not None and recorded is not None and abs(actual - recorded) < 1.0
