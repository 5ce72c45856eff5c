"""Tenants, memberships with roles, quotas and API tokens; the one place where tenant RBAC is decided."""
