"""API errors raised by services: each maps to one status code and a stable error code."""

from __future__ import annotations

from rest_framework import exceptions, status


class Conflict(exceptions.APIException):
    """A request that is well formed but clashes with the object's state (illegal transition, reused key)."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state."
    default_code = "conflict"


class QuotaExceeded(exceptions.APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "A quota would be exceeded."
    default_code = "quota_exceeded"


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


class NeverFits(exceptions.APIException):
    """A request no enrolled node could ever hold (a MIG profile the fleet's GPUs do not expose in enough slices)."""

    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "No enrolled node could ever hold it."
    default_code = "never_fits"
