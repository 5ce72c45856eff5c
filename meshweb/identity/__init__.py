"""Identity: OIDC login for tenants, OIDC bearer tokens for the API, node join tokens and the mesh CA link."""
