"""Listening addresses: one error for any bind that fails, and the lock that lets only one router's workers share
a port.

Every process of the mesh (agent, router, emulated runtime, portal) reports a failed bind the same way: one line
naming the address, why it failed and the flag or config field to change, and exit status 2. The router's workers
share their ports through SO_REUSEPORT, which would also let a second router join the port and silently take half
its traffic; the router therefore holds a port lock for each port it serves, and a second router finds it taken.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import struct
import sys
from dataclasses import dataclass

EXIT_BIND = 2  # the exit status of every bind failure: a usage problem the operator fixes by choosing another port

_REASONS = {
    errno.EADDRINUSE: "address already in use",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
    errno.EADDRNOTAVAIL: "no interface of this machine has that address",
}


@dataclass
class BindError(Exception):
    """A listening address that could not be taken. `change` names what the operator edits to pick another."""

    address: str
    reason: str
    change: str

    def __str__(self) -> str:
        return f"cannot listen on {self.address}: {self.reason}; change {self.change}"


def reason_of(exc: BaseException) -> str:
    err = getattr(exc, "errno", None)
    if isinstance(err, int) and err in _REASONS:
        return _REASONS[err]
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(";")[0].strip() or type(exc).__name__


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def probe_reason(host: str, port: int, reuse_port: bool = False) -> str | None:
    """Why a bind of host:port would fail, or None when it would not; tried with a plain socket before a gRPC
    server binds (gRPC reports only that it failed, after logging its own multi-line error)."""
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {host!r} ({exc.strerror})"
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            s.bind(sockaddr)
        except OSError as exc:
            return reason_of(exc)
    return None


def fail(prog: str, exc: BindError) -> int:
    print(f"{prog}: {exc}", file=sys.stderr, flush=True)
    return EXIT_BIND


class PortLock:
    """Proof that this router (its parent and its workers) owns a TCP port: an abstract-namespace Unix socket named
    after the port, which the kernel gives to one process at a time in a network namespace (the same scope as the
    port) and frees when its holders exit. Not Linux: a lock file in the temporary directory."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._sock: socket.socket | None = None
        self._file: int | None = None

    @property
    def name(self) -> str:
        return f"infermesh-router-port-{self.port}"

    def acquire(self) -> int | None:
        """Take the lock; None when taken, else the pid of the process that holds it (0 when unknown)."""
        if sys.platform.startswith("linux"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.bind("\0" + self.name)
            except OSError as exc:
                s.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
                return self._holder()
            s.listen(8)
            self._sock = s
            return None
        import fcntl
        import tempfile

        path = os.path.join(tempfile.gettempdir(), self.name + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return 0
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._file = fd
        return None

    def _holder(self) -> int:
        # The holder listens on the lock socket, so a connection learns its pid from the kernel (SO_PEERCRED).
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(0.5)
            try:
                c.connect("\0" + self.name)
                creds = c.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            except OSError:
                return 0
            return int(struct.unpack("3i", creds)[0])

    def release(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._file is not None:
            os.close(self._file)
            self._file = None


# Ports handed out by free_port: below Linux's default ephemeral range (32768-60999), so an outgoing connection of
# any process cannot take a port between its choice and the bind of the process it was chosen for.
SPARE_PORTS = range(10_000, 32_768)


def free_port(host: str = "127.0.0.1", *, udp_too: bool = False) -> int:
    """A TCP port nothing listens on now on `host`, picked at random among SPARE_PORTS (another process may still
    take it first, but neither the kernel's ephemeral choices nor a concurrent caller is likely to). With `udp_too`,
    the same UDP port is free as well: gossip probes over UDP and pushes state over TCP on one port."""
    for _ in range(200):
        port = random.choice(SPARE_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind((host, port))
            except OSError:
                continue
        if udp_too:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
        return port
    raise RuntimeError(
        f"no port among {SPARE_PORTS.start}-{SPARE_PORTS.stop - 1} on {host} is free"
        + (" for both TCP and UDP" if udp_too else "")
    )
