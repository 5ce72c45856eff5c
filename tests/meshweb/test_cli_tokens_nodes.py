"""`infermesh token list|revoke` and `infermesh node list|delete` against the portal's database: what they print,
what they change (through the portal's own services, audited), and a clear refusal for an unknown name."""

from __future__ import annotations

import pytest

from meshweb.audit.models import AuditEntry
from meshweb.cli import main
from meshweb.fleet.models import Node, Region, Zone
from meshweb.tenancy.models import ApiToken

pytestmark = pytest.mark.django_db(transaction=True)


def test_token_create_list_revoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "create", "--tenant", "cli-t", "--role", "member", "--name", "ci", "--create-tenant"]) == 0
    plaintext = capsys.readouterr().out.strip()
    token = ApiToken.objects.get(tenant__slug="cli-t")
    assert main(["token", "list", "--tenant", "cli-t"]) == 0
    listed = capsys.readouterr().out
    assert token.prefix in listed and "member" in listed and "active" in listed and plaintext not in listed
    assert main(["token", "revoke", plaintext]) == 0  # the whole token works as well as its prefix
    assert f"revoked {token.prefix}" in capsys.readouterr().out
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert AuditEntry.objects.filter(action="token.revoke").exists()
    assert main(["token", "list", "--tenant", "cli-t"]) == 0
    assert token.prefix not in capsys.readouterr().out  # revoked ones only with --all
    assert main(["token", "list", "--tenant", "cli-t", "--all"]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["token", "revoke", "000000000000"]) == 1
    assert "no token with prefix '000000000000'" in capsys.readouterr().err


def test_node_list_and_delete(capsys: pytest.CaptureFixture[str]) -> None:
    zone = Zone.objects.create(name="cli-zone", region=Region.objects.create(name="cli-region"))
    Node.objects.create(name="cli-node", address="10.0.0.9:7070", zone=zone, roles=["gpu"])
    assert main(["node", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["NAME", "ZONE", "STATUS"]
    assert any(line.split()[:2] == ["cli-node", "cli-zone"] for line in out.splitlines())
    assert main(["node", "delete", "cli-node"]) == 0
    assert "deleted node cli-node" in capsys.readouterr().out
    assert not Node.objects.filter(name="cli-node").exists()
    assert main(["node", "delete", "cli-node"]) == 1
    assert "no node 'cli-node'" in capsys.readouterr().err
