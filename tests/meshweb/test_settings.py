"""Settings from the environment: the embedded default needs no server; production URLs switch to real services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

PROBE = """
import json
from django.conf import settings
print(json.dumps({
    "db": settings.DATABASES["default"]["ENGINE"],
    "db_name": str(settings.DATABASES["default"]["NAME"]),
    "broker": settings.CELERY_BROKER_URL,
    "broker_opts": settings.CELERY_BROKER_TRANSPORT_OPTIONS,
    "channels": settings.CHANNEL_LAYERS["default"]["BACKEND"],
}))
"""


def probe(env: dict[str, str]) -> dict[str, object]:
    base = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}}
    out = subprocess.run(
        [sys.executable, "-c", "import django; django.setup();" + PROBE],
        env={**base, "DJANGO_SETTINGS_MODULE": "meshweb.settings", **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def test_embedded_default_keeps_every_file_under_the_data_dir(tmp_path: Path) -> None:
    got = probe({"INFERMESH_DATA_DIR": str(tmp_path)})
    assert got["db"].endswith("sqlite3")
    assert got["db_name"] == str(tmp_path / "portal.sqlite3")
    assert got["broker"] == "filesystem://"
    folders = {k: v for k, v in got["broker_opts"].items() if k.endswith(("folder", "folder_in", "folder_out"))}
    assert {"data_folder_in", "data_folder_out", "processed_folder", "control_folder"} <= set(folders)
    assert all(str(v).startswith(str(tmp_path)) for v in folders.values())
    assert got["channels"] == "channels.layers.InMemoryChannelLayer"


def test_server_urls_switch_to_postgres_and_redis(tmp_path: Path) -> None:
    got = probe(
        {
            "INFERMESH_DATA_DIR": str(tmp_path),
            "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/infermesh",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
        }
    )
    assert got["db"] == "django_prometheus.db.backends.postgresql"
    assert got["broker"] == "redis://127.0.0.1:6379/0"
    assert got["channels"] == "channels_redis.core.RedisChannelLayer"


def test_tests_run_on_postgres_and_a_real_redis_channel_layer() -> None:
    # The README's test command sets DATABASE_URL and REDIS_URL; these tests exist to exercise the real services.
    assert settings.DATABASES["default"]["ENGINE"] == "django_prometheus.db.backends.postgresql"
    assert settings.REDIS_URL, "REDIS_URL must point at the Redis server (make test sets it)"
    layer = get_channel_layer()
    assert type(layer).__name__ == "RedisChannelLayer"
    group = f"probe-{uuid.uuid4().hex}"

    async def roundtrip() -> dict[str, str]:
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        await layer.group_send(group, {"type": "probe.message", "text": "hello"})
        message = await layer.receive(channel)
        await layer.group_discard(group, channel)
        return message

    assert async_to_sync(roundtrip)() == {"type": "probe.message", "text": "hello"}


def test_a_bad_numeric_variable_stops_the_portal_naming_it(tmp_path: Path) -> None:
    """Every numeric variable of the portal refuses a value that is not a number, naming the variable and value."""
    base = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}}
    cases = {
        "INFERMESH_OUTBOX_KEEP": ("1e3", "is not an integer"),
        "INFERMESH_MAX_BODY_BYTES": ("256k", "is not an integer"),
        "INFERMESH_PORTAL_CERT_TTL_S": ("eight", "is not an integer"),
        "INFERMESH_HEARTBEAT_STALE_S": ("30s", "is not a number"),
        "INFERMESH_DASHBOARD_POLL_S": ("", "is not a number"),
    }
    for name, (value, why) in cases.items():
        env = {**base, "DJANGO_SETTINGS_MODULE": "meshweb.settings", "INFERMESH_DATA_DIR": str(tmp_path), name: value}
        done = subprocess.run(
            [sys.executable, "-c", "import django; django.setup()"], env=env, capture_output=True, text=True
        )
        assert done.returncode != 0, name
        assert f"environment variable {name}={value!r} {why}" in done.stderr, done.stderr[-500:]
    # and a good value is taken
    got = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings; print(settings.INFERMESH_OUTBOX_KEEP)",
        ],
        env={
            **base,
            "DJANGO_SETTINGS_MODULE": "meshweb.settings",
            "INFERMESH_DATA_DIR": str(tmp_path),
            "INFERMESH_OUTBOX_KEEP": " 42 ",
        },
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert got.strip() == "42"
