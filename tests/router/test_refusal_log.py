"""Refused requests leave an access-log line with the status and the reason, never the credential: a wrong or
missing key (401), an unknown model or route (404), a malformed body (400). A real router process."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import httpx
import pytest

from router.proto import grpc_predict_v2_pb2 as pb
from router.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.router.procs import router_config, running_router

SECRET = "sk-wrong-but-secret-0123456789"


def test_refusals_are_logged_without_the_credential(tmp_path: Path) -> None:
    cfg = router_config(["http://127.0.0.1:9"])
    with running_router(cfg, tmp_path) as router:
        chat = router.url + "/v1/chat/completions"
        body = {"model": "demo-llm", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(timeout=10) as c:
            sent = [
                c.post(chat, json=body, headers={"Authorization": f"Bearer {SECRET}"}),
                c.post(chat, json=body),
                c.post(chat, json={**body, "model": "no-such-model"}, headers={"Authorization": "Bearer demo-key"}),
                c.post(chat, content=b"{not json", headers={"Authorization": "Bearer demo-key"}),
                c.get(router.url + "/v1/no-such-route", headers={"Authorization": f"Bearer {SECRET}"}),
            ]
        assert [r.status_code for r in sent] == [401, 401, 404, 400, 404]
        deadline = time.monotonic() + 10
        while len([e for e in router.logs() if e.get("msg") == "access"]) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        lines = [e for e in router.logs() if e.get("msg") == "access"]
    assert [(e["status"], e["cause"]) for e in lines] == [
        (401, "invalid_api_key"),
        (401, "missing_api_key"),
        (404, "model_not_found"),
        (400, "invalid_json"),
        (404, "no_route"),
    ]
    assert all(e["reason"] and e["path"] and e["remote"] for e in lines)
    assert lines[0]["corr_id"] == sent[0].headers["x-request-id"]
    assert SECRET not in router.log_path.read_text()


def test_grpc_refusals_are_logged_without_the_credential(tmp_path: Path) -> None:
    cfg = router_config(["http://127.0.0.1:9"], listen={"grpc_port": 0})
    with running_router(cfg, tmp_path) as router, grpc.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(
                pb.ModelInferRequest(model_name="demo-llm"), metadata=[("authorization", f"Bearer {SECRET}")]
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        deadline = time.monotonic() + 10
        while not [e for e in router.logs() if e.get("msg") == "access"] and time.monotonic() < deadline:
            time.sleep(0.1)
        (line,) = [e for e in router.logs() if e.get("msg") == "access"]
    assert (line["api"], line["status"], line["cause"]) == ("grpc", 401, "invalid_api_key") and line["remote"]
    assert SECRET not in router.log_path.read_text()
