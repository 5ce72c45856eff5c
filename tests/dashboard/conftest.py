"""Fixtures of the dashboard tests: the portal's small world (tests/meshweb) and signed-in browsers per role."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from meshweb.tenancy.services import SYSTEM, membership_set
from tests.meshweb.conftest import World, world  # fixture re-exported for this folder


@pytest.fixture
def login(db: Any) -> Callable[..., Client]:
    """A Django test client signed in as a new user; `role` is set on `tenant`, `superuser` makes a platform admin."""
    counter = iter(range(1000))

    def make(*, tenant: Any = None, role: str = "", superuser: bool = False) -> Client:
        users = get_user_model().objects
        name = f"user{next(counter)}"
        user = users.create_superuser(name, password="pw-123456789") if superuser else users.create_user(name)
        if tenant is not None and role:
            membership_set(principal=SYSTEM, tenant=tenant, user=user, role=role)
        client = Client()
        client.force_login(user)
        return client

    return make


__all__ = ["World", "login", "world"]
