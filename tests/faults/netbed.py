"""A test bed of real hosts on one machine: every host is a network namespace with its own address, joined to the
others by a veth pair whose far end belongs to the bed's wire (tests/faults/netswitch.py, a userspace switch in a
namespace of its own). Zones are address blocks (10.N.<zone>.x); links are cut, healed and degraded per direction
on command. The root namespace is one more host, the observer (`OBSERVER`): the test process, the machine's
PostgreSQL and anything started without a namespace live there and reach every host through the same wire.

Everything the bed makes (namespaces, veth pairs, the switch, every process started with `popen`) is removed by
`close()`, which `with NetBed(...)` and the `netbed` fixtures always call, also when the test fails; a bed left
behind by a killed run (its owner's pid is gone) is swept when the next bed starts. Needs root and iproute2."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OBSERVER = "observer"
PREFIX = "imf"


class NetBedError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetBedError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_ns_pids(ns: str) -> None:
    done = _ip("netns", "pids", ns, check=False)
    for pid in (int(p) for p in done.stdout.split() if p.isdigit()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def sweep_leftovers() -> list[str]:
    """Delete namespaces of beds whose owner process is gone (a run killed before its teardown)."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX):
            continue
        owner = name[len(PREFIX) :].split("-")[0].rstrip("w")
        if owner.isdigit() and not _alive(int(owner)):
            _kill_ns_pids(name)
            _ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


def require_root_and_iproute2() -> None:
    if shutil.which("ip") is None:
        raise NetBedError("the network test bed needs iproute2's `ip` (apt-get install -y iproute2)")
    if os.geteuid() != 0:
        raise NetBedError("the network test bed needs root (network namespaces and veth pairs)")


@dataclass
class Host:
    name: str
    zone: str
    ip: str
    ns: str | None  # None: the observer (root namespace)


@dataclass
class Link:
    cut: bool = False
    loss: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    dup: float = 0.0

    def clean(self) -> bool:
        return self == Link()


class NetBed:
    """`hosts`: host name -> zone name. Hosts get 10.N.<zone index>.<10 + i>; the observer is 10.N.0.1."""

    def __init__(self, hosts: dict[str, str], workdir: Path, *, seed: int = 1) -> None:
        require_root_and_iproute2()
        if OBSERVER in hosts:
            raise NetBedError(f"{OBSERVER!r} is the root namespace's host name; name the hosts otherwise")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.seed = seed
        self.tag = f"{PREFIX}{os.getpid()}"
        net = 64 + os.getpid() % 128
        self.subnet = f"10.{net}.0.0/16"
        zones = sorted(set(hosts.values()))
        self.hosts: dict[str, Host] = {OBSERVER: Host(OBSERVER, "", f"10.{net}.0.1", None)}
        per_zone: dict[str, int] = {}
        for name, zone in hosts.items():
            k = per_zone[zone] = per_zone.get(zone, 0) + 1
            self.hosts[name] = Host(name, zone, f"10.{net}.{zones.index(zone) + 1}.{9 + k}", f"{self.tag}-{name}")
        self.wire = f"{self.tag}w"
        self.control = str(workdir / "wire.sock")
        self.links: dict[tuple[str, str], Link] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.switch: subprocess.Popen[bytes] | None = None
        self._closed = False
        self._made: list[str] = []
        atexit.register(self.close)
        sweep_leftovers()
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # -- building and tearing down -------------------------------------------------------------------------------
    def _build(self) -> None:
        _ip("netns", "add", self.wire)
        self._made.append(self.wire)
        self._sysctl(self.wire, "net.ipv6.conf.all.disable_ipv6=1")
        ports = []
        for i, host in enumerate(self.hosts.values()):
            a, b = f"{self.tag}a{i}", f"{self.tag}b{i}"  # temporary names, 15 characters at most
            _ip("link", "add", a, "type", "veth", "peer", "name", b)
            _ip("link", "set", b, "netns", self.wire, "name", f"p{i}")
            _ip("-n", self.wire, "link", "set", f"p{i}", "up")
            ports.append(f"p{i}={host.name}")
            if host.ns is None:
                _ip("link", "set", a, "name", f"{self.tag}o")
                dev = f"{self.tag}o"
                _ip("addr", "add", f"{host.ip}/16", "dev", dev)
                _ip("link", "set", dev, "up")
                continue
            _ip("netns", "add", host.ns)
            self._made.append(host.ns)
            self._sysctl(host.ns, "net.ipv6.conf.all.disable_ipv6=1")
            _ip("link", "set", a, "netns", host.ns, "name", "eth0")
            _ip("-n", host.ns, "addr", "add", f"{host.ip}/16", "dev", "eth0")
            _ip("-n", host.ns, "link", "set", "eth0", "up")
            _ip("-n", host.ns, "link", "set", "lo", "up")
        log = (self.workdir / "wire.log").open("ab")
        self.switch = subprocess.Popen(
            ["ip", "netns", "exec", self.wire, sys.executable, str(ROOT / "tests/faults/netswitch.py"), self.control,
             *ports],
            stdout=log, stderr=log, start_new_session=True, env={**os.environ, "NETSWITCH_SEED": str(self.seed)},
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                self._command({"op": "ping"})
                break
            except OSError:
                if self.switch.poll() is not None or time.monotonic() > deadline:
                    raise NetBedError(
                        "the bed's switch did not start: " + (self.workdir / "wire.log").read_text()[-2000:]
                    ) from None
                time.sleep(0.05)

    @staticmethod
    def _sysctl(ns: str, setting: str) -> None:
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", setting], capture_output=True, timeout=30)

    def close(self) -> None:
        """Stop every process the bed started, then remove its namespaces (and with them the veth pairs)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        for proc in self.procs:
            stop_process(proc)
        for ns in self._made:
            _kill_ns_pids(ns)  # anything a process of ours left running in its namespace
        stop_process(self.switch, signal.SIGKILL)
        for ns in reversed(self._made):
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", f"{self.tag}o", check=False)  # gone with the wire already; never left behind
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control)

    def __enter__(self) -> NetBed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- hosts and processes -------------------------------------------------------------------------------------
    def ip(self, host: str) -> str:
        return self.hosts[host].ip

    def zone_of(self, host: str) -> str:
        return self.hosts[host].zone

    def in_zone(self, zone: str) -> list[str]:
        return [h.name for h in self.hosts.values() if h.zone == zone]

    def prefix(self, host: str) -> list[str]:
        """The argv prefix that runs a command on `host` (nothing for the observer)."""
        ns = self.hosts[host].ns
        return [] if ns is None else ["ip", "netns", "exec", ns]

    def popen(self, host: str, argv: Sequence[str], *, log: Path | None = None, **kw: Any) -> subprocess.Popen[bytes]:
        out: Any = log.open("ab") if log else subprocess.DEVNULL
        kw.setdefault("cwd", ROOT)
        proc = subprocess.Popen([*self.prefix(host), *argv], stdout=out, stderr=out, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def track(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        """Have the bed stop a process a shared helper started (its own session)."""
        self.procs.append(proc)
        return proc

    # -- faults --------------------------------------------------------------------------------------------------
    def _command(self, msg: dict[str, Any]) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(self.control)
            s.sendall(json.dumps(msg).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        answer: dict[str, Any] = json.loads(buf)
        if not answer.get("ok"):
            raise NetBedError(f"the bed's switch refused {msg.get('op')}: {answer.get('error')}")
        return answer

    def _push(self) -> None:
        rules = [
            {"src": s, "dst": d, "cut": link.cut, "loss": link.loss, "delay_ms": link.delay_ms,
             "jitter_ms": link.jitter_ms, "dup": link.dup}
            for (s, d), link in self.links.items() if not link.clean()
        ]  # fmt: skip
        self._command({"op": "rules", "rules": rules})

    def _link(self, src: str, dst: str) -> Link:
        for h in (src, dst):
            if h not in self.hosts:
                raise NetBedError(f"unknown host {h!r}")
        return self.links.setdefault((src, dst), Link())

    def cut(self, src: str, dst: str, *, one_way: bool = False) -> None:
        """Drop everything from `src` to `dst` (and back, unless `one_way`)."""
        self._link(src, dst).cut = True
        if not one_way:
            self._link(dst, src).cut = True
        self._push()

    def partition(self, *groups: Iterable[str], one_way: bool = False) -> None:
        """Cut every link between hosts of different groups. `one_way`: only from earlier groups to later ones
        (the first group's packets to the others are lost, the others' packets to it still arrive). Hosts in no
        group (the observer, unless named) keep every link."""
        sides = [list(g) for g in groups]
        for i, a in enumerate(sides):
            for j, b in enumerate(sides):
                if i == j or (one_way and j < i):
                    continue
                for s in a:
                    for d in b:
                        self._link(s, d).cut = True
        self._push()

    def degrade(
        self,
        *,
        loss: float = 0.0,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        dup: float = 0.0,
        hosts: Iterable[str] | None = None,
    ) -> None:
        """Impair every direction between the given hosts (default: every host but the observer)."""
        for v, what in ((loss, "loss"), (dup, "dup")):
            if not 0.0 <= v <= 1.0:
                raise NetBedError(f"{what} must be a probability in [0, 1], got {v}")
        names = list(hosts) if hosts is not None else [h for h in self.hosts if h != OBSERVER]
        for s in names:
            for d in names:
                if s != d:
                    link = self._link(s, d)
                    link.loss, link.delay_ms, link.jitter_ms, link.dup = loss, delay_ms, jitter_ms, dup
        self._push()

    def heal(self) -> None:
        """Every link clean again."""
        self.links.clear()
        self._push()

    def stats(self) -> dict[str, dict[str, int]]:
        """Frames forwarded, dropped and duplicated per direction ("src>dst")."""
        stats: dict[str, dict[str, int]] = self._command({"op": "stats"})["stats"]
        return stats

    def dropped(self) -> int:
        return sum(row["dropped"] for row in self.stats().values())


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal a process started in its own session (and its group), then kill it if it does not exit."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGCONT)
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
