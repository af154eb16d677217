"""Process liveness, the one place that asks the kernel whether a pid (or a process group) still runs.

Used by the local deploy target (is the recorded server still up?), the serving metrics (is the worker
that wrote these numbers still alive?) and the native stack (are the service groups gone?).
Standard library only: the serving image imports it too.
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


def alive(pid: int) -> bool:
    """True while process `pid` exists. An exited child of ours (a zombie) is reaped and counts as gone;
    a process of another user counts as alive (we may not signal it, but it runs)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _reap(pid)


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
