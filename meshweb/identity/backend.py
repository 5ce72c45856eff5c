"""mozilla-django-oidc backend: ID tokens checked in full (signature, iss, aud, exp, nonce), users matched on
(issuer, subject), memberships set from the claim mapping at each login."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import SuspiciousOperation
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from meshweb.identity.conf import setting
from meshweb.identity.mapping import MappingError, mapping_source
from meshweb.identity.services import LoginRefused, identity_login, login_refusal_record
from meshweb.identity.tokens import TokenError, verifier

log = logging.getLogger(__name__)
REFUSAL_KEY = "identity_refused"


def claim_rules() -> Any:
    return mapping_source(setting("OIDC_CLAIM_MAPPING"), setting("OIDC_CLAIM_MAPPING_FILE")).rules()


class OidcBackend(OIDCAuthenticationBackend):  # type: ignore[misc]
    def verify_token(self, token: str, **kwargs: Any) -> dict[str, Any]:
        try:
            return verifier().verify(token, audience=self.OIDC_RP_CLIENT_ID, nonce=kwargs.get("nonce"))
        except TokenError as err:
            self._refuse(f"ID token refused: {err}")
            raise SuspiciousOperation(str(err)) from None

    def _refuse(self, reason: str) -> None:
        request = getattr(self, "request", None)
        if request is not None and hasattr(request, "session"):
            request.session[REFUSAL_KEY] = reason

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict[str, Any]) -> Any:
        userinfo = self.get_userinfo(access_token, id_token, payload)
        if userinfo.get("sub") != payload.get("sub"):
            # OIDC Core 5.3.2: a userinfo answer for another subject must not be used.
            self._refuse("the provider's userinfo is for another subject")
            return None
        claims = {**payload, **userinfo}
        try:
            rules = claim_rules()
        except MappingError as err:
            log.error("OIDC login refused: %s", err)
            self._refuse("the portal's claim mapping is misconfigured; ask a platform admin")
            login_refusal_record(issuer=payload["iss"], subject=payload["sub"], reason=str(err))
            return None
        try:
            return identity_login(issuer=payload["iss"], claims=claims, rules=rules)
        except LoginRefused as err:
            self._refuse(str(err))
            return None
