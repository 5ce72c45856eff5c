"""Tenant isolation matrix: tenant A never reads or changes tenant B's objects, through the portal's REST API (OIDC
bearer tokens), the portal's WebSockets (the dashboard's live feed, the agents' link), the agents' gRPC and the
router (OpenAI HTTP, KServe v2 HTTP and gRPC including model metadata and readiness, WebSocket). Real processes."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
import websockets.sync.client as ws_client
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agents.emulator.testing import EmulatorProcess, start_emulator
from agents.proto.infermesh.v1 import control_pb2
from router.proto import grpc_predict_v2_pb2 as pb
from router.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.identity.conftest import Portal
from tests.identity.test_mtls import Mesh, mesh
from tests.router.procs import RouterProc, router_config, start_router

pytestmark = pytest.mark.e2e

__all__ = ["mesh"]  # the mTLS agent of test_mtls, as a fixture here too

KEYS = {"tenant-a": "key-a", "tenant-b": "key-b"}
MODELS = {"tenant-a": "model-a", "tenant-b": "model-b"}


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProc]:
    tmp = tmp_path_factory.mktemp("isolation")
    emulators: list[EmulatorProcess] = [
        start_emulator("--profile", "h100", "--flavor", "vllm", "--model", model, "--instant")
        for model in MODELS.values()
    ]
    cfg = router_config([])
    cfg.update(
        targets=[
            {"model": model, "url": em.url, "runtime": "vllm", "node": f"n{i}"}
            for i, (model, em) in enumerate(zip(MODELS.values(), emulators, strict=True))
        ],
        tenants=[{"name": t, "api_keys": [KEYS[t]], "models": [MODELS[t]]} for t in KEYS],
        listen={"host": "127.0.0.1", "port": 0, "grpc_port": 0},
    )
    proc = start_router(cfg, tmp)
    try:
        yield proc
    finally:
        proc.stop()
        for em in emulators:
            em.stop()


def openai(r: RouterProc, tenant: str, model: str) -> int:
    resp = httpx.post(
        f"{r.url}/v1/completions",
        json={"model": model, "prompt": "hi", "max_tokens": 2},
        headers={"Authorization": f"Bearer {KEYS[tenant]}"},
        timeout=30,
    )
    if resp.status_code == 404:
        assert resp.json()["error"]["code"] == "model_not_found"
    return resp.status_code


def kserve_http(r: RouterProc, tenant: str, model: str) -> int:
    body = {
        "inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["hi"]}],
        "parameters": {"max_tokens": 2},
    }
    resp = httpx.post(
        f"{r.url}/v2/models/{model}/infer", json=body, headers={"Authorization": f"Bearer {KEYS[tenant]}"}, timeout=30
    )
    return resp.status_code


def kserve_grpc(r: RouterProc, tenant: str, model: str) -> int:
    req = pb.ModelInferRequest(
        model_name=model,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="text_input", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[b"hi"])
            )
        ],
        parameters={"max_tokens": pb.InferParameter(int64_param=2)},
    )
    with grpc.insecure_channel(f"127.0.0.1:{r.grpc_port}") as ch:
        try:
            pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(
                req, metadata=(("authorization", f"Bearer {KEYS[tenant]}"),), timeout=30
            )
        except grpc.RpcError as err:
            return {grpc.StatusCode.NOT_FOUND: 404}.get(err.code(), 500)
    return 200


def websocket(r: RouterProc, tenant: str, model: str) -> int:
    url = f"ws://127.0.0.1:{r.port}/v1/ws"
    with ws_client.connect(url, additional_headers={"Authorization": f"Bearer {KEYS[tenant]}"}) as conn:
        conn.send(json.dumps({"model": model, "prompt": "hi", "max_tokens": 2}))
        while True:
            msg = json.loads(conn.recv(timeout=30))
            if msg.get("type") == "done":
                return 200
            if msg.get("type") == "error" or "error" in msg:
                err = msg.get("error", msg)
                return int(err.get("status", 404 if "not_found" in json.dumps(err) else 500))


@pytest.mark.parametrize("api", [openai, kserve_http, kserve_grpc, websocket], ids=lambda f: f.__name__)
@pytest.mark.parametrize("tenant", list(KEYS))
@pytest.mark.parametrize("owner", list(KEYS))
def test_router_matrix(router: RouterProc, api: Any, tenant: str, owner: str) -> None:
    code = api(router, tenant, MODELS[owner])
    assert code == (200 if tenant == owner else 404), (api.__name__, tenant, owner, code)


def _http_status(resp: httpx.Response) -> int:
    if resp.status_code == 404:
        # The very body of an unknown model: nothing tells another tenant's model apart.
        assert resp.json() == {
            "error": f"model {resp.url.path.split('/')[3]!r} is not served here",
            "code": "model_not_found",
        }
    return resp.status_code


def kserve_metadata_http(r: RouterProc, tenant: str, model: str) -> int:
    headers = {"Authorization": f"Bearer {KEYS[tenant]}"}
    return _http_status(httpx.get(f"{r.url}/v2/models/{model}", headers=headers, timeout=10))


def kserve_ready_http(r: RouterProc, tenant: str, model: str) -> int:
    headers = {"Authorization": f"Bearer {KEYS[tenant]}"}
    return _http_status(httpx.get(f"{r.url}/v2/models/{model}/ready", headers=headers, timeout=10))


def _grpc_status(call: Any, request: Any, tenant: str | None) -> tuple[grpc.StatusCode, str]:
    metadata = (("authorization", f"Bearer {KEYS[tenant]}"),) if tenant else None
    try:
        call(request, metadata=metadata, timeout=10)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def _grpc_code(code: grpc.StatusCode, details: str, model: str) -> int:
    if code == grpc.StatusCode.NOT_FOUND:
        assert details == f"model {model!r} is not served here"
    return {grpc.StatusCode.OK: 200, grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.UNAUTHENTICATED: 401}.get(
        code, 500
    )


def kserve_metadata_grpc(r: RouterProc, tenant: str, model: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{r.grpc_port}") as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        code, details = _grpc_status(stub.ModelMetadata, pb.ModelMetadataRequest(name=model), tenant)
    return _grpc_code(code, details, model)


def kserve_ready_grpc(r: RouterProc, tenant: str, model: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{r.grpc_port}") as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        code, details = _grpc_status(stub.ModelReady, pb.ModelReadyRequest(name=model), tenant)
    return _grpc_code(code, details, model)


MODEL_APIS = [kserve_metadata_http, kserve_ready_http, kserve_metadata_grpc, kserve_ready_grpc]


@pytest.mark.parametrize("api", MODEL_APIS, ids=lambda f: f.__name__)
def test_router_model_metadata_and_readiness_matrix(router: RouterProc, api: Any) -> None:
    for tenant in KEYS:
        for owner in KEYS:
            code = api(router, tenant, MODELS[owner])
            assert code == (200 if tenant == owner else 404), (api.__name__, tenant, owner, code)
        assert api(router, tenant, "no-such-model") == 404


def test_router_model_endpoints_need_a_key_and_server_health_stays_open(router: RouterProc) -> None:
    model = MODELS["tenant-a"]
    for path in (f"/v2/models/{model}", f"/v2/models/{model}/ready"):
        resp = httpx.get(f"{router.url}{path}", timeout=10)
        assert resp.status_code == 401 and resp.json()["code"] == "missing_api_key", path
        resp = httpx.get(f"{router.url}{path}", headers={"Authorization": "Bearer wrong"}, timeout=10)
        assert resp.status_code == 401 and resp.json()["code"] == "invalid_api_key", path
    with grpc.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        for call, request in ((stub.ModelMetadata, pb.ModelMetadataRequest(name=model)),
                              (stub.ModelReady, pb.ModelReadyRequest(name=model))):  # fmt: skip
            code, details = _grpc_status(call, request, None)
            assert code == grpc.StatusCode.UNAUTHENTICATED and "missing API key" in details
        # Server-level liveness, readiness and metadata reveal no model and need no key.
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        assert stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10).name == "infermesh-router"
    assert httpx.get(f"{router.url}/v2/health/live", timeout=10).json() == {"live": True}
    assert httpx.get(f"{router.url}/v2/health/ready", timeout=10).status_code == 200
    health = httpx.get(f"{router.url}/healthz", timeout=10).json()
    assert health["ok"] is True and not any(m in json.dumps(health) for m in MODELS.values())


def test_router_lists_only_the_tenants_models(router: RouterProc) -> None:
    for tenant, model in MODELS.items():
        resp = httpx.get(f"{router.url}/v1/models", headers={"Authorization": f"Bearer {KEYS[tenant]}"}, timeout=10)
        assert [m["id"] for m in resp.json()["data"]] == [model]


def _snapshot(portal: Portal) -> Any:
    return {
        path: portal.api(path, portal.admin_token)[1]["results"]
        for path in ("/api/v1/tenants/", "/api/v1/quotas/", "/api/v1/tokens/", "/api/v1/memberships/")
    }


def test_rest_matrix_with_oidc_bearer(oidc_portal: Portal) -> None:
    portal = oidc_portal
    portal.set_mapping(
        [
            {"claim": "groups", "value": "acme-ops", "tenant": "acme", "role": "tenant_admin"},
            {"claim": "groups", "value": "globex-admins", "tenant": "globex", "role": "tenant_admin"},
        ]
    )
    a = portal.provider.client_credentials_token("robot-acme")
    b = portal.provider.mint({"sub": "globex-bot", "groups": ["globex-admins"]})
    before = _snapshot(portal)
    for token, own, other in ((a, "acme", "globex"), (b, "globex", "acme")):
        other_tenant = next(t for t in before["/api/v1/tenants/"] if t["slug"] == other)
        other_quota = next(q for q in before["/api/v1/quotas/"] if q["tenant"] in (other, other_tenant["id"]))
        other_token = next(t for t in before["/api/v1/tokens/"] if t["tenant"] in (other, other_tenant["id"]))
        # Lists show only the caller's tenant.
        for path in ("/api/v1/tenants/", "/api/v1/quotas/", "/api/v1/tokens/"):
            status, body = portal.api(path, token)
            assert status == 200
            assert other not in json.dumps(body["results"]) or path != "/api/v1/tenants/"
        slugs = [t["slug"] for t in portal.api("/api/v1/tenants/", token)[1]["results"]]
        assert slugs == [own]
        # The other tenant's objects: 404 for reads and writes, never 200/403 (existence is not revealed).
        assert portal.api(f"/api/v1/tenants/{other_tenant['id']}/", token)[0] == 404
        assert portal.api(f"/api/v1/quotas/{other_quota['id']}/", token)[0] == 404
        assert portal.api(f"/api/v1/quotas/{other_quota['id']}/", token, "PATCH", {"gpus_max": 1})[0] in (403, 404)
        assert portal.api(f"/api/v1/tokens/{other_token['id']}/", token, "DELETE")[0] in (403, 404)
        status, _ = portal.api("/api/v1/tokens/", token, "POST", {"tenant": other, "role": "viewer"})
        assert status in (400, 403, 404)
    assert _snapshot(portal) == before


# -- WebSockets of the portal process ---------------------------------------------------------------------------
PASSWORD = "iso-pw-0123456789"
DASHBOARD_USERS = {
    "iso-acme-admin": ("acme", "tenant_admin"),
    "iso-globex-admin": ("globex", "tenant_admin"),
    "iso-acme-member": ("acme", "member"),
    "iso-acme-leaver": ("acme", "tenant_admin"),
}


@pytest.fixture(scope="module")
def dashboard_portal(oidc_portal: Portal) -> Portal:
    """The session's portal process with people who sign in with a password: two tenant admins, a member."""
    code = (
        "from django.contrib.auth import get_user_model\n"
        "from meshweb.tenancy.models import Tenant\n"
        "from meshweb.tenancy.services import SYSTEM, membership_set\n"
        f"for name, (slug, role) in {DASHBOARD_USERS!r}.items():\n"
        "    users = get_user_model().objects\n"
        f"    user = users.filter(username=name).first() or users.create_user(name, password={PASSWORD!r})\n"
        "    membership_set(principal=SYSTEM, tenant=Tenant.objects.get(slug=slug), user=user, role=role)\n"
    )
    oidc_portal.cli("manage", "shell", "-c", code)
    return oidc_portal


@contextlib.contextmanager
def sign_in(portal: Portal, username: str) -> Iterator[httpx.Client]:
    """A browser-like client signed in through the dashboard's login form (CSRF token and all)."""
    with httpx.Client(base_url=portal.url, timeout=15) as client:
        page = client.get("/dashboard/login/")
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert csrf, page.text
        form = {"username": username, "password": PASSWORD, "csrfmiddlewaretoken": csrf.group(1), "next": "/"}
        response = client.post("/dashboard/login/", data=form)
        assert response.status_code == 302 and "sessionid" in client.cookies, response.text
        yield client


def dashboard_socket(portal: Portal, client: httpx.Client) -> ws_client.ClientConnection:
    url = portal.url.replace("http://", "ws://") + "/ws/dashboard/"
    headers = {"Origin": portal.url, "Cookie": f"sessionid={client.cookies['sessionid']}"}
    conn = ws_client.connect(url, additional_headers=headers, open_timeout=15)
    assert json.loads(conn.recv(timeout=15))["kind"] == "hello"
    return conn


def read_until(conn: ws_client.ClientConnection, marker: str, timeout: float = 20.0) -> list[str]:
    """Every frame up to and including the first that mentions `marker`."""
    frames: list[str] = []
    deadline = time.monotonic() + timeout
    while not frames or marker not in frames[-1]:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{marker} never arrived; got {frames}"
        frames.append(str(conn.recv(timeout=remaining)))
    return frames


def create_model(portal: Portal, tenant: str, name: str) -> None:
    status, body = portal.api("/api/v1/models/", portal.admin_token, "POST", {"tenant": tenant, "name": name})
    assert status == 201, body


def test_dashboard_socket_never_delivers_another_tenants_changes(dashboard_portal: Portal) -> None:
    portal = dashboard_portal
    tenants = {t["slug"]: t["id"] for t in portal.api("/api/v1/tenants/", portal.admin_token)[1]["results"]}
    marker = secrets.token_hex(4)
    with (
        sign_in(portal, "iso-acme-admin") as acme_client,
        sign_in(portal, "iso-globex-admin") as globex_client,
        dashboard_socket(portal, acme_client) as acme,
        dashboard_socket(portal, globex_client) as globex,
    ):
        # Each tenant's change is followed by the other's, so each socket has had its chance to leak before its
        # own change arrives.
        create_model(portal, "globex", f"theirs-{marker}")
        create_model(portal, "acme", f"ours-{marker}")
        create_model(portal, "globex", f"theirs-again-{marker}")
        seen_by_acme = read_until(acme, f"ours-{marker}")
        seen_by_globex = read_until(globex, f"theirs-again-{marker}")
    assert any(f"theirs-{marker}" in frame for frame in seen_by_globex)
    for frames, other in ((seen_by_acme, "globex"), (seen_by_globex, "acme")):
        leaked = f"theirs-{marker}" if other == "globex" else f"ours-{marker}"
        assert not any(leaked in frame for frame in frames), frames
        for message in map(json.loads, frames):
            # Nothing filed under the other tenant, whatever its kind (audit rows, job and link events).
            assert message.get("tenant") != other and message.get("tenant_id") != tenants[other], message


def test_dashboard_socket_refuses_members_and_anonymous_visitors(dashboard_portal: Portal) -> None:
    portal = dashboard_portal
    url = portal.url.replace("http://", "ws://") + "/ws/dashboard/"
    with sign_in(portal, "iso-acme-member") as member:
        headers = {"Origin": portal.url, "Cookie": f"sessionid={member.cookies['sessionid']}"}
        for extra in (headers, {"Origin": portal.url}):
            with pytest.raises(InvalidStatus) as refused:
                ws_client.connect(url, additional_headers=extra, open_timeout=15)
            assert refused.value.response.status_code == 403


def closed_with(conn: ws_client.ClientConnection, timeout: float = 20.0) -> int | None:
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            conn.recv(timeout=max(0.1, deadline - time.monotonic()))
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    except TimeoutError:
        return None
    return None


def test_dashboard_socket_ends_with_the_membership_and_the_session(dashboard_portal: Portal) -> None:
    portal = dashboard_portal
    memberships = portal.api("/api/v1/memberships/?limit=200", portal.admin_token)[1]["results"]
    leaver = next(m for m in memberships if m["username"] == "iso-acme-leaver")
    with sign_in(portal, "iso-acme-leaver") as client, dashboard_socket(portal, client) as conn:
        assert portal.api(f"/api/v1/memberships/{leaver['id']}/", portal.admin_token, "DELETE")[0] == 204
        assert closed_with(conn) == 4403
    with sign_in(portal, "iso-acme-admin") as client, dashboard_socket(portal, client) as conn:
        csrf = client.cookies["csrftoken"]
        response = client.post("/dashboard/logout/", data={"csrfmiddlewaretoken": csrf})
        assert response.status_code == 302
        assert closed_with(conn) == 4401


def test_agent_socket_refuses_tenant_credentials(dashboard_portal: Portal) -> None:
    portal = dashboard_portal
    portal.set_mapping([{"claim": "groups", "value": "acme-ops", "tenant": "acme", "role": "tenant_admin"}])
    url = portal.url.replace("http://", "ws://") + "/ws/agent/"
    jwt_token = portal.provider.client_credentials_token("robot-acme")
    assert portal.api("/api/v1/tenants/", jwt_token)[0] == 200  # a credential the REST API accepts
    with sign_in(portal, "iso-acme-admin") as client:
        session = {"Cookie": f"sessionid={client.cookies['sessionid']}", "Origin": portal.url}
        for headers in (
            {"Authorization": f"Bearer {portal.admin_token}"},  # even a platform admin's API token
            {"Authorization": f"Bearer {jwt_token}"},
            session,
            {},
        ):
            with pytest.raises(InvalidStatus) as refused:
                ws_client.connect(url, additional_headers=headers, open_timeout=15)
            assert refused.value.response.status_code == 403, headers


# -- the agents' gRPC -----------------------------------------------------------------------------------------------
def test_tenant_credentials_grant_nothing_on_the_agents_grpc(mesh: Mesh, oidc_portal: Portal) -> None:
    """A tenant holds no mesh certificate, and its bearer credentials are not operator JWTs."""
    oidc_portal.set_mapping([{"claim": "groups", "value": "acme-ops", "tenant": "acme", "role": "tenant_admin"}])
    tenant_jwt = oidc_portal.provider.client_credentials_token("robot-acme")
    cordon = "/infermesh.v1.Control/Cordon"
    body = control_pb2.NodeActionRequest(reason="tenant").SerializeToString()
    for token in (oidc_portal.admin_token, tenant_jwt):
        # Without a mesh certificate nothing is reachable, not even the store with the tenants' configuration.
        for method in (cordon, "/infermesh.v1.Store/Get", "/infermesh.v1.StatePlane/ListTargets"):
            assert mesh.call(None, method, token=token) == grpc.StatusCode.UNAVAILABLE, method
        # With an admin certificate, the tenant's credential is no operator JWT.
        assert mesh.call("admin", cordon, body, token=token) == grpc.StatusCode.PERMISSION_DENIED
        assert f"{cordon} needs an operator's bearer JWT: " in mesh.last_details, mesh.last_details
        # Nor does it lift a node certificate's role limits.
        assert mesh.call("router", "/infermesh.v1.Store/Put", token=token) == grpc.StatusCode.PERMISSION_DENIED
