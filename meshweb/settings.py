"""Portal settings, all taken from the environment.

With no `DATABASE_URL` the portal runs on the embedded default: SQLite, a file-system Celery broker and an
in-memory channel layer, every file of it under `INFERMESH_DATA_DIR`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from agents.datadir import data_dir

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def _env_number(name: str, default: str, kind: type[int] | type[float]) -> Any:
    """A numeric environment variable; a bad value stops the process naming the variable and the value."""
    raw = os.environ.get(name, default)
    try:
        return kind(raw.strip())
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ImproperlyConfigured(f"environment variable {name}={raw!r} is not {what}") from None


def _env_int(name: str, default: str) -> int:
    return int(_env_number(name, default, int))


def _env_float(name: str, default: str) -> float:
    return float(_env_number(name, default, float))


def _env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DATA_DIR = data_dir()  # INFERMESH_DATA_DIR (agents/datadir.py)
EMBEDDED = not os.environ.get("DATABASE_URL")
if EMBEDDED:
    DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = _env_bool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY") or "infermesh-insecure-embedded-default-key-change-me"
ALLOWED_HOSTS = _env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = _env_list("CSRF_TRUSTED_ORIGINS", "http://localhost:8000,http://127.0.0.1:8000")

INSTALLED_APPS = [
    "django_prometheus",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "meshweb.core",
    "meshweb.tenancy",
    "meshweb.catalog",
    "meshweb.fleet",
    "meshweb.training",
    "meshweb.policy",
    "meshweb.audit",
    "meshweb.identity",
    "meshweb.meshlink",
    "meshweb.usage",
    "meshweb.dashboard",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "meshweb.core.middleware.CorrelationIdMiddleware",
    "meshweb.meshlink.tracing.TracingMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "meshweb.urls"
ASGI_APPLICATION = "meshweb.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

if EMBEDDED:
    DATABASES: dict[str, dict[str, Any]] = {
        "default": {
            "ENGINE": "django_prometheus.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "portal.sqlite3"),
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"},
        }
    }
else:
    _db = dj_database_url.parse(os.environ["DATABASE_URL"])
    if _db["ENGINE"] == "django.db.backends.postgresql":
        _db["ENGINE"] = "django_prometheus.db.backends.postgresql"
        # Under ASGI each request may run on another thread, so persistent per-thread connections would pile up
        # until the server refuses clients; a per-process pool bounds them and saves a connect per request.
        _db["OPTIONS"] = {
            "pool": {
                "min_size": 1,
                "max_size": _env_int("INFERMESH_DB_POOL_SIZE", "8"),
                "timeout": 10,
            }
        }
    DATABASES = {"default": dict(_db)}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [{"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"}]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
LOGIN_URL = "/admin/login/"

# OIDC login and bearer tokens (meshweb/identity/conf.py): on when OIDC_OP_ISSUER is set.
from meshweb.identity.conf import authentication_backends, oidc_settings  # noqa: E402

globals().update(oidc_settings(os.environ))
AUTHENTICATION_BACKENDS = authentication_backends(globals()["OIDC_ENABLED"])
SESSION_ENGINE = "meshweb.core.sessions"
# Static files are served by the portal itself (no separate web server on the embedded default).
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# Bodies larger than this are refused with 413 before any parsing.
DATA_UPLOAD_MAX_MEMORY_SIZE = _env_int("INFERMESH_MAX_BODY_BYTES", str(256 * 1024))

REDIS_URL = os.environ.get("REDIS_URL", "")

# Channels: Redis in production, in-memory on the embedded default.
if REDIS_URL:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Celery: Redis in production, a file-system broker (no server) on the embedded default.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or (REDIS_URL or "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker = DATA_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker / "queue"),
        "data_folder_out": str(_broker / "queue"),
        "processed_folder": str(_broker / "processed"),
        # Without it kombu writes its control exchange into the working directory.
        "control_folder": str(_broker / "control"),
        "store_processed": False,
    }
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "infermesh"
# Periods of the mesh's housekeeping (seconds); tests shorten them through the environment.
INFERMESH_QUARANTINE_PERIOD_S = _env_float("INFERMESH_QUARANTINE_PERIOD_S", "15")
INFERMESH_QUARANTINE_COOLDOWN_S = _env_float("INFERMESH_QUARANTINE_COOLDOWN_S", "300")
INFERMESH_QUARANTINE_WINDOW_S = _env_float("INFERMESH_QUARANTINE_WINDOW_S", "120")
INFERMESH_HEARTBEAT_STALE_S = _env_float("INFERMESH_HEARTBEAT_STALE_S", "30")
INFERMESH_TELEMETRY_KEEP_S = _env_float("INFERMESH_TELEMETRY_KEEP_S", "3600")
INFERMESH_OUTBOX_KEEP = _env_int("INFERMESH_OUTBOX_KEEP", "100000")
INFERMESH_OUTBOX_POLL_S = _env_float("INFERMESH_OUTBOX_POLL_S", "2")
INFERMESH_AGENT_HEARTBEAT_S = _env_float("INFERMESH_AGENT_HEARTBEAT_S", "5")
INFERMESH_AGENT_TELEMETRY_S = _env_float("INFERMESH_AGENT_TELEMETRY_S", "5")
# The mesh listener: the same application over TLS that requires an SVID of the mesh CA (`infermesh portal
# --mesh-bind`), with a server certificate the portal issues itself for these hosts.
INFERMESH_MESH_BIND = os.environ.get("INFERMESH_MESH_BIND", "")
INFERMESH_MESH_HOSTS = _env_list("INFERMESH_MESH_HOSTS", "127.0.0.1,localhost")
INFERMESH_PORTAL_CERT_TTL_S = _env_int("INFERMESH_PORTAL_CERT_TTL_S", "86400")
# Agent links: "optional" checks a client certificate when one is presented; "required" refuses links without one,
# so agents must come through the mesh listener.
# How often a live agent link's credential and certificate are checked again (revocation ends the link).
INFERMESH_MESH_LINK_RECHECK_S = _env_float("INFERMESH_MESH_LINK_RECHECK_S", "10")
INFERMESH_MESH_LINK_MTLS = os.environ.get("INFERMESH_MESH_LINK_MTLS", "optional").strip().lower()
if INFERMESH_MESH_LINK_MTLS not in {"optional", "required"}:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        f"INFERMESH_MESH_LINK_MTLS: expected optional or required, got {os.environ['INFERMESH_MESH_LINK_MTLS']!r}"
    )
# One static schedule; `infermesh beat` refuses to start while another beat holds the lock.
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "quarantine-checks": {"task": "fleet.quarantine_checks", "schedule": INFERMESH_QUARANTINE_PERIOD_S},
    "stale-heartbeats": {
        "task": "fleet.stale_heartbeats",
        "schedule": max(1.0, min(INFERMESH_HEARTBEAT_STALE_S / 3, 30.0)),
    },
    "prune-telemetry": {"task": "meshlink.prune_telemetry", "schedule": 300.0},
    "prune-outbox": {"task": "meshlink.prune_outbox", "schedule": 600.0},
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "meshweb.tenancy.authentication.ApiTokenAuthentication",
        "meshweb.tenancy.authentication.SessionAuthentication",
        "meshweb.identity.authentication.OidcBearerAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["meshweb.tenancy.permissions.TenantRolePermission"],
    "DEFAULT_PAGINATION_CLASS": "meshweb.core.api.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "meshweb.core.api.errors.exception_handler",
    "DEFAULT_PARSER_CLASSES": ["meshweb.core.api.parsers.StrictJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "InferMesh portal API",
    "DESCRIPTION": "Tenants, quotas, models, fleet, training jobs and policies of an InferMesh mesh.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "meshweb.core.api.schema.add_error_responses",
    ],
    "ENUM_NAME_OVERRIDES": {
        "NodeStatusEnum": "meshweb.fleet.models.NodeStatus",
        "JobStatusEnum": "meshweb.training.models.JobStatus",
        "GpuTypeEnum": "meshweb.fleet.models.GpuType",
        "StrategyEnum": "meshweb.policy.models.Strategy",
        "RoleEnum": "meshweb.tenancy.roles.Role",
        "TopologyEnum": "meshweb.training.models.Topology",
    },
}

PROMETHEUS_EXPORT_MIGRATIONS = False
# Several worker processes each keep their own counters; prometheus_client merges them from this folder.
PROMETHEUS_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")

# Dashboard: a router's /metrics to show requests/s and p99 TTFT on the overview ("" = no router configured), and how
# often a dashboard socket re-reads the audit log when no doorbell rang (seconds).
DASHBOARD_ROUTER_METRICS_URL = os.environ.get("INFERMESH_ROUTER_METRICS_URL", "")
# Where tenants send inference requests (shown with a new key on the dashboard's keys page).
DASHBOARD_ROUTER_URL = os.environ.get("INFERMESH_ROUTER_URL", "http://127.0.0.1:8080")
DASHBOARD_POLL_S = _env_float("INFERMESH_DASHBOARD_POLL_S", "3")

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"correlation": {"()": "meshweb.core.logging.CorrelationIdFilter"}},
    "formatters": {"json": {"()": "meshweb.core.logging.JsonFormatter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["correlation"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.server": {"level": "WARNING"},
        "django.request": {"level": "ERROR"},
    },
}
