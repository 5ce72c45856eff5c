"""Limit/offset pagination with a hard ceiling on page size."""

from rest_framework.pagination import LimitOffsetPagination as _LimitOffsetPagination


class LimitOffsetPagination(_LimitOffsetPagination):
    default_limit = 50
    max_limit = 500
