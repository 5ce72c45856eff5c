"""API conventions shared by every app: one error shape, strict JSON, limit/offset pagination."""
