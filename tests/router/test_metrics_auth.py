"""/metrics names tenants and models: with listen.metrics_token_file a real router process serves it only to that
bearer token, and a config naming an unreadable or too short token file is refused naming the field."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from router.config import ConfigError, parse_config
from tests.router.procs import router_config, running_router

pytestmark = pytest.mark.e2e


def test_metrics_need_the_token_when_one_is_configured(tmp_path: Path) -> None:
    token = "metrics-scrape-token-0123456789"
    (tmp_path / "metrics.token").write_text(token + "\n")
    cfg = router_config(["http://127.0.0.1:9"], listen={"metrics_token_file": str(tmp_path / "metrics.token")})
    with running_router(cfg, tmp_path) as r:
        assert httpx.get(r.url + "/metrics").status_code == 401
        assert httpx.get(r.url + "/metrics", headers={"Authorization": "Bearer demo-key"}).status_code == 401
        ok = httpx.get(r.url + "/metrics", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and "router_" in ok.text
        assert httpx.get(r.url + "/healthz").status_code == 200  # probes stay open


def test_metrics_are_open_without_a_token_file(tmp_path: Path) -> None:
    with running_router(router_config(["http://127.0.0.1:9"]), tmp_path) as r:
        assert httpx.get(r.url + "/metrics").status_code == 200


@pytest.mark.parametrize(("content", "problem"), [(None, "cannot read"), ("short", "at least 16 characters")])
def test_bad_token_files_are_refused(tmp_path: Path, content: str | None, problem: str) -> None:
    path = tmp_path / "metrics.token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as err:
        parse_config({"listen": {"metrics_token_file": str(path)}}, env={})
    assert "metrics_token_file" in str(err.value) and problem in str(err.value)
