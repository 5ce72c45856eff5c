"""Tenancy-aware base classes for the domain apps (as NetBox keeps netbox/api/): viewsets whose querysets are
restricted to the requester's tenants, relation fields that only accept objects the requester may write to, and the
generic audited writes behind them. They sit above tenancy and audit and below every domain app."""
