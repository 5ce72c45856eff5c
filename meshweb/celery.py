"""The Celery app (tasks autodiscovered from each app's tasks.py) and the `infermesh worker` / `infermesh beat`
commands. The broker comes from settings: Redis in production, a file-system broker on the embedded default."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from celery import Celery

from agents.argparsing import Parser, examples

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "meshweb.settings")

app = Celery("meshweb")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

BEAT_LOCK_KEY = 0x6D657368626561  # pg_advisory_lock key: "meshbea"


def _setup(migrate: bool = True) -> Any:
    import django

    django.setup()
    from django.conf import settings

    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        for key in ("data_folder_in", "data_folder_out", "processed_folder"):
            Path(str(settings.CELERY_BROKER_TRANSPORT_OPTIONS[key])).mkdir(parents=True, exist_ok=True)
    if migrate:
        _migrate(settings)
    return settings


def _migrate(settings: Any) -> None:
    if settings.EMBEDDED:
        from django.core.management import call_command

        call_command("migrate", interactive=False, verbosity=0)


def worker_main(argv: Sequence[str]) -> int:
    parser = Parser(
        prog="infermesh worker",
        description="Run a Celery worker of the portal.",
        epilog=examples("infermesh worker", "infermesh worker --concurrency 4 --pool prefork"),
    )
    parser.add_argument("--concurrency", type=int, default=2, help="tasks run at once (default 2)")
    parser.add_argument("--pool", choices=["threads", "prefork", "solo"], default="threads", help="Celery pool")
    parser.add_argument("--loglevel", default="info", help="debug, info, warning or error")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    _setup()
    app.worker_main(
        ["worker", f"--loglevel={args.loglevel}", f"--pool={args.pool}", f"--concurrency={args.concurrency}"]
    )
    return 0


@contextlib.contextmanager
def single_beat(settings: Any) -> Iterator[None]:
    """Hold the one-beat lock for the life of the process: a PostgreSQL advisory lock (all machines sharing the
    database), or a file lock under the data directory on the embedded default."""
    db = settings.DATABASES["default"]
    if "postgresql" in db["ENGINE"]:
        import psycopg

        conn = psycopg.connect(
            dbname=db["NAME"], user=db.get("USER") or None, password=db.get("PASSWORD") or None,
            host=db.get("HOST") or None, port=db.get("PORT") or None, autocommit=True,
        )  # fmt: skip
        try:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (BEAT_LOCK_KEY,)).fetchone()
            if not row or not row[0]:
                raise RuntimeError("another beat holds the lock (PostgreSQL advisory lock); run exactly one beat")
            yield
        finally:
            conn.close()
        return
    path = Path(settings.DATA_DIR) / "beat.lock"
    handle: IO[str] = path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another beat holds {path}; run exactly one beat per INFERMESH_DATA_DIR") from None
        yield
    finally:
        handle.close()


def beat_main(argv: Sequence[str]) -> int:
    parser = Parser(
        prog="infermesh beat",
        description="Run the one Celery beat (the static schedule in settings).",
        epilog=examples("infermesh beat                                # exactly one per database"),
    )
    parser.add_argument("--loglevel", default="info", help="debug, info, warning or error")
    args = parser.parse_args(argv)
    settings = _setup(migrate=False)  # the lock first: a second beat is refused at once
    schedule = Path(settings.DATA_DIR) / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(single_beat(settings))
        except RuntimeError as exc:  # the one-beat lock is taken: like a taken port, exit 2
            print(f"infermesh beat: {exc}", file=sys.stderr)
            return 2
        _migrate(settings)
        app.Beat(loglevel=args.loglevel, schedule=str(schedule)).run()
    return 0
