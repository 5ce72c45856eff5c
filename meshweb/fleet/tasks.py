"""Celery tasks of the fleet: thin, idempotent wrappers around services (safe to retry or to run twice)."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from meshweb.fleet.services import quarantine_check_all, stale_nodes_mark_offline

# A database that blips is retried with backoff; anything else is a bug and is logged by Celery.
RETRY = {"autoretry_for": (OperationalError, InterfaceError), "retry_backoff": True, "max_retries": 5}


@shared_task(name="fleet.quarantine_checks", **RETRY)
def quarantine_checks() -> dict[str, str]:
    return quarantine_check_all()


@shared_task(name="fleet.stale_heartbeats", **RETRY)
def stale_heartbeats() -> list[str]:
    return stale_nodes_mark_offline()
