"""ml.serving.handoff on real sockets: which listener of a shared port the kernel hands new connections."""

from __future__ import annotations

import select
import socket

import pytest

from ml.serving import handoff

pytestmark = pytest.mark.skipif(not handoff.supported(), reason="SO_REUSEPORT steering is Linux only")


def _accepted_by(listeners: list[socket.socket], port: int, n: int = 20) -> list[int]:
    """Connect n times; for each, the index of the listener that got the connection."""
    for sock in listeners:
        sock.setblocking(False)
    got = []
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            ready, _, _ = select.select(listeners, [], [], 2)
            assert len(ready) == 1
            conn, _ = ready[0].accept()
            conn.close()
            got.append(listeners.index(ready[0]))
    return got


def test_a_second_server_beside_the_first_gets_nothing_until_it_takes_the_traffic():
    old = handoff.listen("127.0.0.1", 0, reuse_port=True)
    port = old.getsockname()[1]
    new = handoff.listen("127.0.0.1", port, reuse_port=True)
    try:
        assert set(_accepted_by([old, new], port)) == {0}
        handoff.on_signal(new, handoff.TAKE_SIGNAL)
        assert set(_accepted_by([old, new], port)) == {1}
        old.close()
        assert set(_accepted_by([new], port)) == {0}
        handoff.on_signal(new, handoff.PIN_SIGNAL)
        third = handoff.listen("127.0.0.1", port, reuse_port=True)
        with third:
            assert set(_accepted_by([new, third], port)) == {0}  # the next version beside it gets nothing
    finally:
        old.close()
        new.close()


def test_a_port_held_without_reuse_port_cannot_be_shared():
    plain = handoff.listen("127.0.0.1", 0)
    with plain, pytest.raises(OSError):
        handoff.listen("127.0.0.1", plain.getsockname()[1], reuse_port=True)
