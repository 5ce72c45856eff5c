"""Celery tasks of the agent link: pruning the outbox and the telemetry history (idempotent)."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from meshweb.meshlink.outbox import prune
from meshweb.meshlink.services import telemetry_prune

RETRY = {"autoretry_for": (OperationalError, InterfaceError), "retry_backoff": True, "max_retries": 5}


@shared_task(name="meshlink.prune_outbox", **RETRY)
def prune_outbox() -> int:
    return prune(keep=settings.INFERMESH_OUTBOX_KEEP)


@shared_task(name="meshlink.prune_telemetry", **RETRY)
def prune_telemetry() -> int:
    return telemetry_prune(older_than=timedelta(seconds=settings.INFERMESH_TELEMETRY_KEEP_S))
