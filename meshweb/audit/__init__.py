"""An audit log of every write: who, what, before/after and the request's correlation id."""
