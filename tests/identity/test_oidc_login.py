"""OIDC login end to end: Debian's chromium signs in through oidc-provider's login form into a real portal process;
claims map to tenant roles at each login, logins mapping to no tenant are refused and audited, logout ends both
sessions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.identity.conftest import Portal

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

RULES = [
    {"claim": "groups", "value": "acme-admins", "tenant": "acme", "role": "tenant_admin"},
    {"claim": "groups", "value": "globex-readers", "tenant": "globex", "role": "viewer"},
    {"claim": "groups", "value": "acme-ops", "tenant": "acme", "role": "operator"},
]


def login(page: Any, portal: Portal, user: str, password: str) -> None:
    page.goto(f"{portal.url}/")
    page.click("#login")
    # Now on the provider's own login form.
    assert page.url.startswith(portal.provider.issuer), page.url
    page.fill("#login", user)
    page.fill("#password", password)
    page.click("#submit")
    page.wait_for_url(lambda url: url.startswith(portal.url), timeout=20_000)


def whoami(page: Any, portal: Portal) -> dict[str, Any]:
    response = page.request.get(f"{portal.url}/auth/me")
    assert response.status == 200
    data: dict[str, Any] = response.json()
    return data


def audit(portal: Portal, action: str) -> list[dict[str, Any]]:
    status, body = portal.api(f"/api/v1/audit/?action={action}&limit=100", portal.admin_token)
    assert status == 200, body
    return list(body["results"])


def test_login_flow_end_to_end_and_logout(oidc_portal: Portal, browser: Any) -> None:
    portal = oidc_portal
    portal.set_mapping(RULES)
    portal.provider.set_account("alice", password="alice-pw-123", groups=["acme-admins"])
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{portal.url}/")
        page.click("#login")
        page.fill("#login", "alice")
        page.fill("#password", "wrong-password")
        page.click("#submit")
        assert page.text_content("#error") == "Invalid login or password."

        page.fill("#login", "alice")
        page.fill("#password", "alice-pw-123")
        page.click("#submit")
        page.wait_for_url(f"{portal.url}/", timeout=20_000)
        me = whoami(page, portal)
        assert me["authenticated"] is True
        assert me["roles"] == {"acme": "tenant_admin"}
        assert me["platform_admin"] is False
        assert page.text_content("#username", timeout=5_000).startswith("alice.")

        # The session works on the API and sees only its tenant.
        tenants = page.request.get(f"{portal.url}/api/v1/tenants/").json()
        assert [t["slug"] for t in tenants["results"]] == ["acme"]
        # The membership was written through the audited service.
        entries = [e for e in audit(portal, "membership.set") if e["actor"].startswith("oidc:alice@")]
        assert entries and entries[0]["after"]["role"] == "tenant_admin"

        # Logout: the portal session ends, and the provider's session too (RP-initiated logout).
        page.click("#logout button")
        page.wait_for_url(lambda url: url.startswith(portal.provider.issuer), timeout=20_000)
        page.click("#confirm-logout")
        page.wait_for_url(f"{portal.url}/", timeout=20_000)
        assert whoami(page, portal)["authenticated"] is False
        page.click("#login")
        # Signed out at the provider as well: its login form asks again.
        page.wait_for_selector("#password", timeout=20_000)
    finally:
        context.close()


def test_mapping_changes_take_effect_at_next_login(oidc_portal: Portal, browser: Any) -> None:
    portal = oidc_portal
    portal.set_mapping(RULES)
    portal.provider.set_account("bob", password="bob-pw-123", groups=["acme-admins", "globex-readers"])
    context = browser.new_context()
    page = context.new_page()
    try:
        login(page, portal, "bob", "bob-pw-123")
        assert whoami(page, portal)["roles"] == {"acme": "tenant_admin", "globex": "viewer"}
        context.clear_cookies()

        # The operator edits the mapping: acme-admins now only earns viewer, globex-readers nothing.
        portal.set_mapping([{"claim": "groups", "value": "acme-admins", "tenant": "acme", "role": "viewer"}])
        login(page, portal, "bob", "bob-pw-123")
        assert whoami(page, portal)["roles"] == {"acme": "viewer"}
        context.clear_cookies()

        # The provider changes bob's groups: the next login follows them too.
        portal.set_mapping(RULES)
        portal.provider.set_account("bob", password="bob-pw-123", groups=["acme-ops"])
        login(page, portal, "bob", "bob-pw-123")
        me = whoami(page, portal)
        assert me["roles"] == {"acme": "operator"}
        # Same portal user each time: matched on (issuer, subject), not on email.
        assert me["name"].startswith("user:bob.")
        deleted = [e for e in audit(portal, "membership.delete") if e["actor"].startswith("oidc:bob@")]
        assert len(deleted) == 1 and deleted[0]["tenant"] == "globex"
    finally:
        context.close()


def test_login_mapping_to_no_tenant_is_refused_and_audited(oidc_portal: Portal, browser: Any) -> None:
    portal = oidc_portal
    portal.set_mapping(RULES)
    portal.provider.set_account("mallory", password="mallory-pw-123", groups=["strangers"])
    context = browser.new_context()
    page = context.new_page()
    try:
        login(page, portal, "mallory", "mallory-pw-123")
        assert page.url == f"{portal.url}/auth/refused/"
        assert "map to no tenant" in page.text_content("#reason")
        assert whoami(page, portal)["authenticated"] is False
        refused = [e for e in audit(portal, "identity.login_refused") if e["after"]["subject"] == "mallory"]
        assert refused and refused[0]["after"]["issuer"] == portal.provider.issuer
        assert json.dumps(refused[0]["after"]).count("password") == 0
    finally:
        context.close()


def test_same_email_at_another_subject_is_another_user(oidc_portal: Portal, browser: Any) -> None:
    portal = oidc_portal
    portal.set_mapping(RULES)
    portal.provider.set_account("carol", password="carol-pw-123", groups=["acme-admins"], email="shared@example.test")
    portal.provider.set_account("dave", password="dave-pw-123", groups=["globex-readers"], email="shared@example.test")
    context = browser.new_context()
    page = context.new_page()
    try:
        login(page, portal, "carol", "carol-pw-123")
        carol = whoami(page, portal)
        context.clear_cookies()
        login(page, portal, "dave", "dave-pw-123")
        dave = whoami(page, portal)
        assert carol["name"] != dave["name"]
        assert carol["roles"] == {"acme": "tenant_admin"} and dave["roles"] == {"globex": "viewer"}
    finally:
        context.close()
