"""Replacing a server without a gap (Linux): SO_REUSEPORT listeners steered by a classic BPF program.

With `--reuse-port` the server binds its port with SO_REUSEPORT, so a second server of the same user can
bind the same port beside it: the two sockets form one reuseport group, and the kernel picks a socket of the
group for every new connection. A one-instruction program attached to the group (SO_ATTACH_REUSEPORT_CBPF)
makes that pick: it returns the index of the socket that gets every new connection, index 0 being the
group's senior socket (the server that was there first).

* Every server pins the traffic on the senior socket as soon as it listens, so a new version that binds the
  port beside the serving one receives nothing; it answers its smoke test on a private loopback port
  (`--smoke-port`).
* `TAKE_SIGNAL` (SIGUSR1) makes the new server take every new connection (the program returns 1, its
  index); connections already accepted by the old server are answered by it.
* The deployer stops the old server once its accept queue is empty; its socket leaves the group, the new
  one becomes the only, so senior, socket, and `PIN_SIGNAL` (SIGUSR2) pins the traffic on it again, ready
  for the next version.

No connection is refused or reset on the way: at every moment a listening socket of the group takes new
connections, and the one that is closed has nothing queued. The deployer's side is ml.deploy.local.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import socket
import struct
import sys

log = logging.getLogger("ml.serving")

#: <asm-generic/socket.h>
SO_ATTACH_REUSEPORT_CBPF = 51
#: the new server takes every new connection of the port
TAKE_SIGNAL = signal.SIGUSR1
#: the traffic is pinned on the senior socket of the port (the one that was there first)
PIN_SIGNAL = signal.SIGUSR2
#: BPF_RET | BPF_K: return the constant k
_BPF_RET_K = 0x06
#: uvicorn's default listen backlog
BACKLOG = 2048


def supported() -> bool:
    """SO_REUSEPORT groups steered by a cBPF program: Linux only."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def steer(sock: socket.socket, index: int) -> None:
    """Every new connection of `sock`'s reuseport group goes to its socket number `index` (0: the senior);
    an index past the group's size falls back to the kernel's hash, which one socket alone always wins."""
    program = ctypes.create_string_buffer(struct.pack("HBBI", _BPF_RET_K, 0, 0, index))
    fprog = struct.pack("HP", 1, ctypes.addressof(program))  # struct sock_fprog {len; *filter}: copied by the kernel
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def smoke_host(host: str) -> str:
    """The loopback address a server bound to `host` answers its smoke test on."""
    return "::1" if ":" in host else "127.0.0.1"


def listen(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on host:port (OSError when it cannot bind). With `reuse_port` it joins the
    port's reuseport group with the traffic pinned on the senior socket."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        if reuse_port:
            steer(sock, 0)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def on_signal(sock: socket.socket, signum: int) -> None:
    """What TAKE_SIGNAL and PIN_SIGNAL do to `sock`, the server's public socket."""
    take = signum == TAKE_SIGNAL
    steer(sock, 1 if take else 0)
    log.info("port %d: %s", sock.getsockname()[1],
             "this server takes every new connection" if take else "new connections pinned on the senior server")


def install(sock: socket.socket) -> None:
    """Handle TAKE_SIGNAL and PIN_SIGNAL in this (single-process) server."""
    for signum in (TAKE_SIGNAL, PIN_SIGNAL):
        signal.signal(signum, lambda number, _frame: on_signal(sock, number))
