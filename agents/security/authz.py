"""Authorization of gRPC calls by the caller's SPIFFE ID and roles (from its mesh certificate), plus bearer-JWT
RBAC on the admin calls; one grpc.aio server interceptor applies it to every service of the agent.

The decision is a pure function of (method, caller's SVID, this node, JWT claims) so it is tested without sockets.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from agents.security.ca import CaError, SvidInfo, parse_svid

log = logging.getLogger("meshd.authz")

SELF = "self"  # the node's own processes (its adapters, its ctl): certificate of this very node
ANY = "any"  # any member of the trust domain

# Admin calls: besides the certificate, a caller with the `admin` role (an operator's tooling) must present an
# `authorization: Bearer <JWT>` whose claims grant mesh operation.
ADMIN_METHODS = frozenset(
    {
        "/infermesh.v1.Control/Cordon",
        "/infermesh.v1.Control/Uncordon",
        "/infermesh.v1.Control/Drain",
        "/infermesh.v1.Control/PutPolicy",
        "/infermesh.v1.Control/DeletePolicy",
        "/infermesh.v1.Store/Put",
        "/infermesh.v1.Store/Cas",
        "/infermesh.v1.Store/Delete",
        "/infermesh.v1.RaftAdmin/TransferLeader",
        "/infermesh.v1.RaftAdmin/Snapshot",
        "/infermesh.v1.RaftAdmin/ChangeMembership",
    }
)

# First matching prefix wins. Unknown services of future components default to ANY member (still mTLS-authenticated).
POLICY: tuple[tuple[str, frozenset[str]], ...] = (
    ("/infermesh.v1.StatePlane/Push", frozenset({SELF, "adapter"})),
    ("/infermesh.v1.StatePlane/", frozenset({SELF, "router", "coordinator"})),
    ("/infermesh.v1.Scoring/ReportOutcome", frozenset({SELF, "router"})),
    ("/infermesh.v1.Scoring/", frozenset({SELF, "router", "coordinator"})),
    ("/infermesh.v1.Control/Cordon", frozenset({SELF, "coordinator", "admin"})),
    ("/infermesh.v1.Control/Uncordon", frozenset({SELF, "coordinator", "admin"})),
    ("/infermesh.v1.Control/Drain", frozenset({SELF, "coordinator", "admin"})),
    ("/infermesh.v1.Control/PutPolicy", frozenset({"coordinator", "admin"})),
    ("/infermesh.v1.Control/DeletePolicy", frozenset({"coordinator", "admin"})),
    ("/infermesh.v1.Control/", frozenset({ANY})),
    ("/infermesh.v1.Raft/", frozenset({"coordinator"})),
    ("/infermesh.v1.Store/Put", frozenset({"coordinator", "admin"})),
    ("/infermesh.v1.Store/Cas", frozenset({"coordinator", "admin"})),
    ("/infermesh.v1.Store/Delete", frozenset({"coordinator", "admin"})),
    ("/infermesh.v1.Store/", frozenset({"coordinator", "router", "trainer", "admin", SELF})),
    ("/infermesh.v1.RaftAdmin/Status", frozenset({ANY})),
    ("/infermesh.v1.RaftAdmin/", frozenset({"coordinator", "admin"})),
    ("/grpc.health.v1.Health/", frozenset({ANY})),
    ("", frozenset({ANY})),
)


@dataclass(frozen=True)
class Refusal:
    """One refused call, as the audit trail, the metrics and the portal report it."""

    method: str  # full gRPC method, /package.Service/Method
    caller: str  # the caller's SPIFFE ID; "" when its certificate did not parse
    peer: str  # the transport address gRPC saw, e.g. ipv4:10.0.0.7:51234
    code: str  # gRPC status code name
    reason: str

    @property
    def service(self) -> str:
        return self.method.lstrip("/").partition("/")[0]

    @property
    def method_name(self) -> str:
        return self.method.rpartition("/")[2]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    code: grpc.StatusCode = grpc.StatusCode.OK
    reason: str = ""


def allowed_callers(method: str) -> frozenset[str]:
    for prefix, callers in POLICY:
        if method.startswith(prefix):
            return callers
    return frozenset({ANY})


def decide(
    method: str,
    caller: SvidInfo,
    *,
    node: str,
    trust_domain: str,
    revoked: frozenset[int] | set[int],
    jwt_check: Callable[[], str | None] | None = None,
) -> Decision:
    """Whether `caller` may call `method` on this node. `jwt_check` returns None when the call's bearer token grants
    mesh operation, else the reason it does not."""
    if caller.trust_domain != trust_domain:
        return Decision(False, grpc.StatusCode.UNAUTHENTICATED, f"{caller.spiffe_id} is not in {trust_domain}")
    if caller.serial in revoked:
        return Decision(False, grpc.StatusCode.UNAUTHENTICATED, f"certificate {caller.serial:x} is revoked")
    callers = allowed_callers(method)
    ok = ANY in callers or (SELF in callers and caller.node == node) or any(r in callers for r in caller.roles)
    if not ok:
        need = ", ".join(sorted("this node" if c == SELF else c for c in callers))
        return Decision(
            False,
            grpc.StatusCode.PERMISSION_DENIED,
            f"{caller.spiffe_id} (roles: {', '.join(caller.roles) or 'none'}) may not call {method}; needs {need}",
        )
    machine_ok = caller.node == node or caller.has_role("coordinator")
    if method in ADMIN_METHODS and not machine_ok:
        # A person's tooling: the certificate says "mesh admin tool", the JWT says who and with which rights.
        reason = "no bearer token" if jwt_check is None else jwt_check()
        if reason is not None:
            return Decision(
                False, grpc.StatusCode.PERMISSION_DENIED, f"{method} needs an operator's bearer JWT: {reason}"
            )
    return Decision(True)


class PeerCache:
    """Parsed SVIDs by PEM, so a connection's certificate is parsed once, not on every call."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._cache: dict[bytes, SvidInfo | str] = {}

    def get(self, pem: bytes) -> SvidInfo | str:
        hit = self._cache.get(pem)
        if hit is None:
            try:
                hit = parse_svid(pem)
            except CaError as err:
                hit = str(err)
            if len(self._cache) >= self._size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[pem] = hit
        return hit


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> Mapping[str, str]:
    md = context.invocation_metadata() or ()
    return {str(k): (v.decode() if isinstance(v, bytes) else str(v)) for k, v in md}


class AuthzInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every method handler: the check runs with the call's context (which carries the peer certificate)."""

    def __init__(
        self,
        *,
        node: str,
        trust_domain: str,
        revoked: Callable[[], frozenset[int]],
        jwt_verify: Callable[[str], str | None] | None,
        on_refusal: Callable[[Refusal], None] | None = None,
    ) -> None:
        self.node = node
        self.trust_domain = trust_domain
        self._revoked = revoked
        self._jwt_verify = jwt_verify
        self._peers = PeerCache()
        self._on_refusal = on_refusal
        # Per-call work kept off the hot path: the wrapped handler of each method, and the decision for each
        # (certificate, method) pair while the revoked set is the same object (Revocations replaces it on change).
        # Admin methods are decided on every call, since their bearer JWT comes with the call.
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._decisions: dict[tuple[bytes, str], Decision] = {}
        self._decided_for: frozenset[int] | None = None

    async def _check(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert") or []
        if not pems:
            await self._refuse(context, method, "", grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        info = self._peers.get(pems[0])
        if isinstance(info, str):
            await self._refuse(context, method, "", grpc.StatusCode.UNAUTHENTICATED, info)
        assert isinstance(info, SvidInfo)

        def jwt_check() -> str | None:
            header = _metadata(context).get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return "no `authorization: Bearer` metadata"
            if self._jwt_verify is None:
                return "this agent accepts no bearer tokens (tls.jwt is not configured)"
            return self._jwt_verify(token.strip())

        revoked = self._revoked()
        if revoked is not self._decided_for or len(self._decisions) >= 4096:
            self._decisions.clear()
            self._decided_for = revoked
        key = (pems[0], method)
        decision = self._decisions.get(key)
        if decision is None:
            decision = decide(
                method, info, node=self.node, trust_domain=self.trust_domain, revoked=revoked, jwt_check=jwt_check
            )
            if method not in ADMIN_METHODS:
                self._decisions[key] = decision
        if not decision.allowed:
            await self._refuse(context, method, info.spiffe_id, decision.code, decision.reason)

    async def _refuse(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str, who: str, code: grpc.StatusCode, reason: str
    ) -> None:
        refusal = Refusal(method=method, caller=who, peer=context.peer() or "", code=code.name, reason=reason)
        if self._on_refusal is not None:
            self._on_refusal(refusal)  # the owner writes the audit line, counts and reports it
        else:
            log.warning("refused %s from %s: %s", method, who or refusal.peer, reason)
        await context.abort(code, reason)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap(handler, lambda context: self._check(method, context))
        self._handlers[method] = (handler, wrapped)
        return wrapped


def _wrap(
    handler: grpc.RpcMethodHandler, check: Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]
) -> grpc.RpcMethodHandler:
    def unary_response(fn: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await check(context)
            result = fn(request, context)
            return await result if inspect.isawaitable(result) else result

        return wrapped

    def stream_response(fn: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            await check(context)
            result = fn(request, context)
            if inspect.isasyncgen(result) or hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            else:
                await result  # a handler that writes with context.write()

        return wrapped

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary_response(handler.unary_unary), **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream_response(handler.unary_stream), **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary_response(handler.stream_unary), **kwargs)
    return grpc.stream_stream_rpc_method_handler(stream_response(handler.stream_stream), **kwargs)
