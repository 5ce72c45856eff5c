"""Where training state lives in the Raft policy store, and a small async client of the agent's Store service.

Keys: portal jobs and quotas arrive under `kv/portal/` (written by the portal link), node status under `nodes/`;
trainers publish their inventory under `kv/training/inventory/<node>` and worker reports under
`kv/training/reports/<job>/<node>`; the scheduler commits plans to `kv/training/plans/<job>`, the job's state
(status, reason, events, telemetry roll-up) to `kv/training/jobs/<job>` and the fleet's MIG slices and their
fragmentation to `kv/training/mig`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from agents.proto.infermesh.v1 import store_pb2, store_pb2_grpc
from agents.security.tls import ClientIdentity, Dialer

if TYPE_CHECKING:
    from agents.meshd.component import AgentContext

PORTAL_JOBS = "kv/portal/jobs/"
PORTAL_QUOTAS = "kv/portal/quotas/"
NODE_STATUS = "nodes/"
INVENTORY = "kv/training/inventory/"
PLANS = "kv/training/plans/"
JOBS = "kv/training/jobs/"
REPORTS = "kv/training/reports/"
MIG = "kv/training/mig"  # per node: MIG slices free / total per profile and the fragmentation ratio

# Store node statuses (agents.store.schema / the portal link) -> scheduler node statuses.
STORE_TO_NODE_STATUS = {
    "active": "active",
    "cordon": "cordoned",
    "drain": "draining",
    "quarantine": "quarantined",
    "offline": "offline",
}


class StoreClient:
    """Get / put / delete JSON values through an agent's `infermesh.v1.Store` (any member; writes reach the
    leader) and ask `RaftAdmin` whether this member leads. With the agent's SVID (`identity`) it dials over mTLS and
    follows the certificate's rotation."""

    def __init__(
        self, address: str, group: str = "", timeout_s: float = 5.0, *, identity: ClientIdentity | None = None
    ) -> None:
        self.dialer = Dialer(address, identity)
        self._channel = self.dialer.channel()
        self._store = store_pb2_grpc.StoreStub(self._channel)
        self._admin = store_pb2_grpc.RaftAdminStub(self._channel)
        self.group = group
        self.timeout_s = timeout_s

    def _stubs(self) -> tuple[store_pb2_grpc.StoreStub, store_pb2_grpc.RaftAdminStub]:
        channel = self.dialer.channel()
        if channel is not self._channel:
            self._channel = channel
            self._store = store_pb2_grpc.StoreStub(channel)
            self._admin = store_pb2_grpc.RaftAdminStub(channel)
        return self._store, self._admin

    @classmethod
    def of_agent(cls, ctx: AgentContext, group: str = "") -> StoreClient:
        """The client a component uses to reach its own agent (`ctx`: the AgentContext), with the agent's SVID when
        its config has `tls:`. A wildcard listen address is dialled on loopback, which the certificate names."""
        host, _, port = str(ctx.grpc_address).rpartition(":")
        host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}.get(host, host)
        return cls(f"{host}:{port}", group, identity=ClientIdentity.of(ctx.tls))

    @property
    def store(self) -> store_pb2_grpc.StoreStub:
        return self._stubs()[0]

    @property
    def admin(self) -> store_pb2_grpc.RaftAdminStub:
        return self._stubs()[1]

    async def close(self) -> None:
        await self.dialer.close()

    async def is_leader(self) -> bool:
        st = await self.admin.Status(store_pb2.RaftStatusRequest(group=self.group), timeout=self.timeout_s)
        return st.role == "leader"

    async def get_prefix(self, prefix: str, *, serializable: bool = False) -> dict[str, Any]:
        """Every key under `prefix` with its JSON-decoded value (values that are not JSON are skipped)."""
        req = store_pb2.StoreGetRequest(group=self.group, key=prefix, prefix=True, serializable=serializable)
        resp = await self.store.Get(req, timeout=self.timeout_s)
        out: dict[str, Any] = {}
        for kv in resp.kvs:
            try:
                out[kv.key] = json.loads(kv.value)
            except ValueError:
                continue
        return out

    async def put(self, key: str, value: Any) -> None:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
        await self.store.Put(store_pb2.StorePutRequest(group=self.group, key=key, value=text), timeout=self.timeout_s)

    async def delete(self, key: str) -> None:
        await self.store.Delete(store_pb2.StoreDeleteRequest(group=self.group, key=key), timeout=self.timeout_s)
