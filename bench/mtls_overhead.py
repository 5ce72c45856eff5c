"""What mTLS costs on the agent's gRPC API: two real `infermesh agent` processes, one plaintext and one with `tls:`
(client certificates of an offline mesh CA, SPIFFE/role authorization and revocation checks in the interceptor),
called with the same unary RPC (Control/ListNodes):

- calls/s with 32 calls in flight on one long-lived channel (what the router and peers do);
- the latency of one call at a time on that channel (p50, p99);
- the cost of a new connection: open a channel and make its first call (the TLS handshake, when there is one).

    .venv/bin/python bench/mtls_overhead.py [--seconds 5] [--connects 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from agents.proto.infermesh.v1 import control_pb2, control_pb2_grpc
from agents.security.ca import CertificateAuthority, cert_pem, key_pem, new_key
from agents.security.tls import ClientIdentity, dial
from tests.agents.harness import AgentProcess, start_agent

TD = "bench.mesh"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def agent(workdir: Path, tls: dict[str, str] | None) -> AgentProcess:
    cfg: dict[str, object] = {
        "node": {"id": "bench-0", "roles": ["router"]},
        "listen": {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0"},
        "shutdown": {"drain_s": 0, "grace_s": 1},
        "log": {"level": "info", "json": True},
    }
    if tls is not None:
        cfg["tls"] = tls
    return start_agent(cfg, workdir)


def pki(workdir: Path) -> tuple[dict[str, str], ClientIdentity]:
    ca = CertificateAuthority.init(workdir / "ca", TD)
    files: dict[str, Path] = {}
    for who, roles in (("agent", ["router"]), ("client", ["router"])):
        key = new_key()
        cert = ca.issue(public_key=key.public_key(), node=f"bench-{who}", roles=roles, ttl_s=86_400)
        files[f"{who}.crt"] = workdir / f"{who}.crt"
        files[f"{who}.key"] = workdir / f"{who}.key"
        files[f"{who}.crt"].write_bytes(cert_pem(cert))
        files[f"{who}.key"].write_bytes(key_pem(key))
    ca_pem = workdir / "ca" / "ca.crt"
    section = {"trust_domain": TD, "ca": str(ca_pem), "cert": str(files["agent.crt"]), "key": str(files["agent.key"])}
    return section, ClientIdentity(str(ca_pem), str(files["client.crt"]), str(files["client.key"]))


async def throughput(address: str, identity: ClientIdentity | None, seconds: float, inflight: int) -> float:
    async with dial(address, identity) as ch:
        stub = control_pb2_grpc.ControlStub(ch)
        await stub.ListNodes(control_pb2.ListNodesRequest(), timeout=10)
        done = 0
        stop = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < stop:
                await stub.ListNodes(control_pb2.ListNodesRequest(), timeout=10)
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(inflight)))
        return done / (time.monotonic() - started)


async def latency(address: str, identity: ClientIdentity | None, calls: int) -> list[float]:
    async with dial(address, identity) as ch:
        stub = control_pb2_grpc.ControlStub(ch)
        await stub.ListNodes(control_pb2.ListNodesRequest(), timeout=10)
        out = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await stub.ListNodes(control_pb2.ListNodesRequest(), timeout=10)
            out.append((time.perf_counter() - t0) * 1e6)
        return out


async def connects(address: str, identity: ClientIdentity | None, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with dial(address, identity) as ch:
            await control_pb2_grpc.ControlStub(ch).ListNodes(control_pb2.ListNodesRequest(), timeout=10)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="throughput run per side")
    ap.add_argument("--calls", type=int, default=2000, help="sequential calls for latency")
    ap.add_argument("--connects", type=int, default=200, help="new connections per side")
    ap.add_argument("--inflight", type=int, default=32)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        section, client = pki(workdir)
        plain, secure = agent(workdir, None), agent(workdir, section)
        try:
            sides = {"plaintext": (plain.grpc, None), "mtls": (secure.grpc, client)}
            rows: dict[str, dict[str, float]] = {}
            # Interleaved, twice, so that a noisy moment on the shared machine does not land on one side only.
            for _ in range(2):
                for name, (address, identity) in sides.items():
                    row = rows.setdefault(name, {"rps": 0.0})
                    row["rps"] = max(row["rps"], asyncio.run(throughput(address, identity, args.seconds / 2,
                                                                         args.inflight)))  # fmt: skip
            for name, (address, identity) in sides.items():
                lat = asyncio.run(latency(address, identity, args.calls))
                con = asyncio.run(connects(address, identity, args.connects))
                rows[name] |= {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "connect": statistics.median(con)}
        finally:
            plain.stop()
            secure.stop()

    print(f"{'side':<10} {'calls/s':>9} {'p50 us':>8} {'p99 us':>8} {'new conn + 1st call ms':>23}")
    for name, r in rows.items():
        print(f"{name:<10} {r['rps']:>9.0f} {r['p50']:>8.0f} {r['p99']:>8.0f} {r['connect']:>23.2f}")
    p, m = rows["plaintext"], rows["mtls"]
    print(
        f"summary: mtls_rps_ratio={m['rps'] / p['rps']:.2f} mtls_added_p50_us={m['p50'] - p['p50']:.0f} "
        f"mtls_added_p99_us={m['p99'] - p['p99']:.0f} mtls_connect_ms={m['connect']:.2f} "
        f"plaintext_connect_ms={p['connect']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
