"""Node credentials: the secret an agent presents on its portal link (`imn_<prefix>_<secret>`), issued here and
checked here; only a hash is kept. (Enrollment with a join token and a CSR, which gives an agent its certificate,
is `meshweb.identity.mesh.node_enroll`.)"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.db import transaction
from django.utils import timezone

from agents.proto.portal_link import CREDENTIAL_PREFIX
from meshweb.audit.services import audit_record
from meshweb.fleet.models import Node
from meshweb.identity.models import NodeCredential
from meshweb.tenancy.rbac import Principal


def _hash(secret: str) -> str:
    # 256 random bits: a fast hash is enough, as for API tokens.
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def node_credential_issue(*, principal: Principal, node: Node) -> tuple[NodeCredential, str]:
    """Issue a node credential (shown once) and revoke the node's earlier ones."""
    now = timezone.now()
    NodeCredential.objects.filter(node=node, revoked_at__isnull=True).update(revoked_at=now)
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    cred = NodeCredential.objects.create(node=node, prefix=prefix, secret_hash=_hash(secret))
    audit_record(actor=principal.name, action="node.enroll", obj=cred, tenant_id=None, after={"node": node.name})
    return cred, f"{CREDENTIAL_PREFIX}{prefix}_{secret}"


def node_authenticate(raw: str) -> tuple[Node | None, str]:
    """(node, "") for a valid credential, else (None, why)."""
    if not raw:
        return None, "no credential (Authorization: Bearer imn_...)"
    if not raw.startswith(CREDENTIAL_PREFIX):
        return None, "credential is not a node credential (imn_...)"
    prefix, sep, secret = raw[len(CREDENTIAL_PREFIX) :].partition("_")
    if not sep or len(prefix) != 12 or not secret:
        return None, "malformed node credential"
    cred = NodeCredential.objects.select_related("node").filter(prefix=prefix).first()
    if cred is None:
        return None, f"unknown node credential {prefix}"
    if not hmac.compare_digest(_hash(secret), cred.secret_hash):
        return None, f"wrong secret for node credential {prefix}"
    if cred.revoked_at is not None:
        return None, f"node credential {prefix} was revoked"
    NodeCredential.objects.filter(pk=cred.pk).update(last_used_at=timezone.now())
    return cred.node, ""
