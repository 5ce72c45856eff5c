"""The test bed's wire: a userspace Ethernet switch between the hosts' veth pairs, with per-direction faults.

It runs inside the bed's wire namespace (`ip netns exec <wire> python tests/faults/netswitch.py CONTROL PORT=HOST...`)
and owns the wire end of every host's veth pair (those ends have no address and no kernel bridge, so a frame goes
from one host to another only when this process forwards it). Frames are read and written with PACKET_VNET_HDR, so
the kernel's segmentation and checksum offloads pass through unchanged.

Each direction (source host -> destination host) has a rule: cut (drop everything), loss (drop with probability),
delay and jitter (milliseconds), duplicate (send twice with probability). Frames to broadcast or not-yet-learned
addresses are flooded, each copy judged by its own direction's rule. The control socket (a UNIX stream socket,
one JSON object per line, one JSON answer per line) takes:

    {"op": "rules", "rules": [{"src": "a", "dst": "b", "cut": true, "loss": 0.1, "delay_ms": 5, "jitter_ms": 2,
                               "dup": 0.01}, ...]}     replace every rule (hosts not named: a clean link)
    {"op": "stats"}                                    frames forwarded, dropped and duplicated per direction
    {"op": "ping"}

The kernel's `tc netem` would do the same on the veth; this switch exists because it behaves the same on every
kernel (netem is a module that many container kernels leave out)."""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import random
import select
import socket
import sys
import time
from dataclasses import dataclass

ETH_P_ALL = 3
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4
VNET_HDR_LEN = 10


@dataclass
class Rule:
    cut: bool = False
    loss: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    dup: float = 0.0


class Switch:
    def __init__(self, control: str, ports: dict[str, str], seed: int) -> None:
        self.rng = random.Random(seed)
        self.ports: dict[socket.socket, str] = {}  # socket -> host
        self.by_host: dict[str, socket.socket] = {}
        for ifname, host in ports.items():
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            s.bind((ifname, 0))
            s.setblocking(False)
            self.ports[s] = host
            self.by_host[host] = s
        self.macs: dict[bytes, str] = {}
        self.rules: dict[tuple[str, str], Rule] = {}
        self.stats: dict[str, dict[str, int]] = {}
        self.pending: list[tuple[float, int, socket.socket, bytes]] = []
        self.seq = 0
        if os.path.exists(control):
            os.unlink(control)
        self.control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.control.bind(control)
        self.control.listen(8)
        self.clients: dict[socket.socket, bytes] = {}

    def count(self, src: str, dst: str, what: str) -> None:
        key = f"{src}>{dst}"
        row = self.stats.setdefault(key, {"forwarded": 0, "dropped": 0, "duplicated": 0})
        row[what] += 1

    def send(self, out: socket.socket, frame: bytes) -> None:
        with contextlib.suppress(OSError):  # a host whose end went down (its namespace is being torn down)
            out.send(frame)

    def forward(self, src_sock: socket.socket, frame: bytes) -> None:
        src = self.ports[src_sock]
        eth = frame[VNET_HDR_LEN:]
        if len(eth) < 14:
            return
        self.macs[eth[6:12]] = src
        dst_host = self.macs.get(eth[0:6]) if not eth[0] & 1 else None
        outs = [dst_host] if dst_host is not None else [h for h in self.by_host if h != src]
        now = time.monotonic()
        for dst in outs:
            if dst == src:
                continue
            rule = self.rules.get((src, dst))
            if rule is not None:
                if rule.cut or (rule.loss and self.rng.random() < rule.loss):
                    self.count(src, dst, "dropped")
                    continue
                copies = 2 if rule.dup and self.rng.random() < rule.dup else 1
                if copies == 2:
                    self.count(src, dst, "duplicated")
                delay = rule.delay_ms + (self.rng.uniform(-rule.jitter_ms, rule.jitter_ms) if rule.jitter_ms else 0)
                self.count(src, dst, "forwarded")
                for _ in range(copies):
                    if delay > 0:
                        self.seq += 1
                        heapq.heappush(self.pending, (now + delay / 1000.0, self.seq, self.by_host[dst], frame))
                    else:
                        self.send(self.by_host[dst], frame)
                continue
            self.count(src, dst, "forwarded")
            self.send(self.by_host[dst], frame)

    def command(self, msg: dict[str, object]) -> dict[str, object]:
        op = msg.get("op")
        if op == "ping":
            return {"ok": True}
        if op == "stats":
            return {"ok": True, "stats": self.stats}
        if op == "rules":
            rules: dict[tuple[str, str], Rule] = {}
            for r in msg.get("rules") or []:  # type: ignore[attr-defined]
                src, dst = r["src"], r["dst"]
                for h in (src, dst):
                    if h not in self.by_host:
                        return {"ok": False, "error": f"unknown host {h!r}"}
                rules[(src, dst)] = Rule(
                    cut=bool(r.get("cut", False)),
                    loss=float(r.get("loss", 0.0)),
                    delay_ms=float(r.get("delay_ms", 0.0)),
                    jitter_ms=float(r.get("jitter_ms", 0.0)),
                    dup=float(r.get("dup", 0.0)),
                )
            self.rules = rules
            return {"ok": True, "rules": len(rules)}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def serve_control(self, s: socket.socket) -> None:
        if s is self.control:
            conn, _ = s.accept()
            self.clients[conn] = b""
            return
        data = s.recv(65536)
        if not data:
            del self.clients[s]
            s.close()
            return
        buf = self.clients[s] + data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                answer = self.command(json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                answer = {"ok": False, "error": f"bad command: {exc}"}
            s.sendall(json.dumps(answer).encode() + b"\n")
        self.clients[s] = buf

    def run(self) -> None:
        print("switch ready", flush=True)
        while True:
            timeout = None
            if self.pending:
                timeout = max(0.0, self.pending[0][0] - time.monotonic())
            readable, _, _ = select.select([*self.ports, self.control, *self.clients], [], [], timeout)
            for s in readable:
                if s in self.ports:
                    for _ in range(64):
                        try:
                            frame, addr = s.recvfrom(70000)
                        except BlockingIOError:
                            break
                        if addr[2] != PACKET_OUTGOING:
                            self.forward(s, frame)
                else:
                    self.serve_control(s)
            now = time.monotonic()
            while self.pending and self.pending[0][0] <= now:
                _, _, out, frame = heapq.heappop(self.pending)
                self.send(out, frame)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: netswitch.py CONTROL_SOCKET IFNAME=HOST ...", file=sys.stderr)
        return 2
    ports = dict(p.split("=", 1) for p in argv[1:])
    Switch(argv[0], ports, seed=int(os.environ.get("NETSWITCH_SEED", "1"))).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
