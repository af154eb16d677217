"""ml.procs: which processes still run. A zombie, ours or another process's, has stopped: the local target waits
for a stopped server by this, and a server started by a finished CLI command is collected by PID 1, whenever that
gets to it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from ml.procs import _zombie, alive

_ORPHANING = """
import os, time
child = os.fork()
if child == 0:
    os._exit(0)  # exits at once; this parent never collects it
print(child, flush=True)
time.sleep(60)
"""


def test_another_processes_zombie_counts_as_gone():
    parent = subprocess.Popen([sys.executable, "-c", _ORPHANING], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 10
        while not _zombie(child) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _zombie(child)  # it exists for the kernel (os.kill(child, 0) succeeds)...
        os.kill(child, 0)
        assert alive(child) is False  # ...but it does not run
        assert alive(parent.pid) is True and not _zombie(parent.pid)
    finally:
        parent.kill()
        parent.wait(10)


def test_our_own_exited_child_is_reaped_and_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while not _zombie(child.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert alive(child.pid) is False
