"""Portal subcommands of `infermesh`: serve the portal, create API tokens, run management commands."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agents.argparsing import Parser, examples


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "meshweb.settings")
    import django

    django.setup()


def parse_bind(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def portal_main(argv: Sequence[str]) -> int:
    parser = Parser(
        prog="infermesh portal",
        description="Serve the portal (HTTP + WebSocket).",
        epilog=examples(
            "infermesh portal --demo                      # embedded database, demo tenant and admin",
            "DATABASE_URL=postgres://... REDIS_URL=redis://... infermesh portal --bind 0.0.0.0:8000 --workers 4",
            "infermesh portal --mesh-bind 0.0.0.0:8443 --mesh-host portal.example.com   # agents over mTLS",
        ),
    )
    parser.add_argument(
        "--bind", type=parse_bind, default=("127.0.0.1", 8000), help="HOST:PORT (default 127.0.0.1:8000)"
    )
    parser.add_argument(
        "--mesh-bind",
        type=parse_bind,
        default=None,
        help="HOST:PORT of the mesh listener: the portal over TLS, requiring an SVID of the mesh CA (default: "
        "INFERMESH_MESH_BIND; none when unset)",
    )
    parser.add_argument(
        "--mesh-host",
        action="append",
        default=None,
        help="a name or address agents dial the mesh listener by, in its certificate (repeatable; default: "
        "INFERMESH_MESH_HOSTS)",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--no-migrate", action="store_true", help="do not apply migrations first")
    parser.add_argument("--demo", action="store_true", help="seed the demo tenant, admin and token first")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    host, port = args.bind
    # Addresses are checked before anything starts: a taken port is one line and exit 2, not uvicorn's error after
    # the "serving on" line.
    from agents.binding import BindError, fail, join_host_port, probe_reason

    reason = probe_reason(host, port)
    if reason is not None:
        return fail("infermesh portal", BindError(join_host_port(host, port), reason, "--bind"))

    _setup_django()
    from django.conf import settings
    from django.core.management import call_command

    if args.workers > 1:
        # Every worker writes its metrics here; /metrics merges them (prometheus_client multi-process mode).
        prom_dir = Path(settings.PROMETHEUS_MULTIPROC_DIR or settings.DATA_DIR / "prometheus")
        shutil.rmtree(prom_dir, ignore_errors=True)
        prom_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir)
    from meshweb.identity.mesh import portal_ca_problem

    problem = portal_ca_problem()
    if problem is not None:
        print(f"infermesh portal: {problem}", file=sys.stderr)
        return 2
    if settings.EMBEDDED and not args.no_migrate:
        call_command("migrate", interactive=False, verbosity=0)
    if args.demo:
        from meshweb.demo_data import seed_demo

        for line in seed_demo():
            print(line, flush=True)

    import uvicorn

    from meshweb.meshlink.listener import PortalServers, TlsFiles, mesh_config, renew_in_background

    mesh_bind = args.mesh_bind
    if mesh_bind is None and settings.INFERMESH_MESH_BIND:
        try:
            mesh_bind = parse_bind(settings.INFERMESH_MESH_BIND)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"INFERMESH_MESH_BIND: {exc}")
    if mesh_bind is not None:
        reason = probe_reason(*mesh_bind)
        if reason is not None:
            change = "--mesh-bind or INFERMESH_MESH_BIND"
            return fail("infermesh portal", BindError(join_host_port(*mesh_bind), reason, change))
    app = "meshweb.asgi:application"
    configs = [
        uvicorn.Config(
            app, host=host, port=port, workers=args.workers, log_level="warning", lifespan="off", access_log=False
        )
    ]
    files = None
    print(f"portal: serving on http://{host}:{port}/ (database: {settings.DATABASES['default']['ENGINE']})", flush=True)
    if mesh_bind is not None:
        from meshweb.identity.mesh import portal_server_certificate

        hosts = args.mesh_host or settings.INFERMESH_MESH_HOSTS
        ttl_s = settings.INFERMESH_PORTAL_CERT_TTL_S

        def issue() -> TlsFiles:
            return TlsFiles(
                *portal_server_certificate(directory=settings.DATA_DIR / "mesh-listener", hosts=hosts, ttl_s=ttl_s)
            )

        try:
            files = issue()
        except ValueError as exc:
            parser.error(str(exc))
        configs.append(mesh_config(app, mesh_bind[0], mesh_bind[1], files, args.workers))
        renew_in_background(issue, every_s=max(5.0, min(ttl_s / 10, 300.0)))
        print(
            f"portal: mesh listener on https://{mesh_bind[0]}:{mesh_bind[1]}/ (client certificates of the mesh CA, "
            f"agent links {settings.INFERMESH_MESH_LINK_MTLS} mTLS; server certificate for {', '.join(hosts)})",
            flush=True,
        )
    reload_s = max(1.0, min(settings.INFERMESH_PORTAL_CERT_TTL_S / 20, 30.0))
    PortalServers(configs, files, reload_s=reload_s).serve_forever()
    return 0


def token_main(argv: Sequence[str]) -> int:
    from meshweb.tenancy.roles import Role

    parser = Parser(
        prog="infermesh token",
        description="Manage API tokens.",
        epilog=examples(
            "infermesh token create --tenant demo --role member",
            "infermesh token list --tenant demo",
            "infermesh token revoke 3f9a0c1b2d4e           # by the prefix that list shows, or the whole token",
        ),
    )
    sub = parser.add_subparsers(dest="verb", required=True)
    create = sub.add_parser("create", help="create a token and print it (shown once)")
    create.add_argument("--tenant", required=True, help="tenant slug")
    create.add_argument("--role", required=True, choices=Role.values, help="what the token may do")
    create.add_argument("--name", default="", help="a label for the token (default: none)")
    create.add_argument("--expires-days", type=int, default=90, help="0 = never expires")
    create.add_argument("--create-tenant", action="store_true", help="create the tenant if it does not exist")
    listing = sub.add_parser("list", help="list tokens (never their secrets)")
    listing.add_argument("--tenant", default="", help="only this tenant's (default: every tenant)")
    listing.add_argument("--all", action="store_true", help="revoked and expired ones too")
    revoke = sub.add_parser("revoke", help="revoke a token at once")
    revoke.add_argument("token", help="its prefix (as `token list` shows it) or the whole token")
    args = parser.parse_args(argv)
    if args.verb == "create" and args.expires_days < 0:
        parser.error("--expires-days must be 0 or more")
    if args.verb != "create":
        return _token_other(args)

    _setup_django()
    from datetime import timedelta

    from django.conf import settings
    from django.core.management import call_command

    from meshweb.tenancy.models import Tenant
    from meshweb.tenancy.services import SYSTEM, tenant_create, token_create

    if settings.EMBEDDED:
        call_command("migrate", interactive=False, verbosity=0)
    tenant = Tenant.objects.filter(slug=args.tenant).first()
    if tenant is None:
        if not args.create_tenant:
            print(f"infermesh token: no tenant {args.tenant!r} (add --create-tenant to create it)", file=sys.stderr)
            return 1
        tenant = tenant_create(principal=SYSTEM, slug=args.tenant)
    expires = timedelta(days=args.expires_days) if args.expires_days else None
    _, plaintext = token_create(principal=SYSTEM, tenant=tenant, role=args.role, name=args.name, expires_in=expires)
    print(plaintext)
    return 0


def _token_other(args: argparse.Namespace) -> int:
    _setup_django()
    from django.conf import settings
    from django.core.management import call_command
    from django.db.models import Q
    from django.utils import timezone

    from meshweb.tenancy.models import ApiToken
    from meshweb.tenancy.services import SYSTEM, token_revoke
    from meshweb.tenancy.tokens import split_token

    if settings.EMBEDDED:
        call_command("migrate", interactive=False, verbosity=0)
    if args.verb == "revoke":
        parts = split_token(args.token)
        prefix = parts[0] if parts else args.token
        token = ApiToken.objects.filter(prefix=prefix).select_related("tenant").first()
        if token is None:
            print(f"infermesh token: no token with prefix {prefix!r} (see infermesh token list)", file=sys.stderr)
            return 1
        token_revoke(principal=SYSTEM, token=token)
        print(f"revoked {token.prefix} ({token.tenant.slug}, {token.role}{', ' + token.name if token.name else ''})")
        return 0
    now = timezone.now()
    tokens = ApiToken.objects.select_related("tenant").order_by("tenant__slug", "created_at")
    if args.tenant:
        tokens = tokens.filter(tenant__slug=args.tenant)
    if not args.all:
        tokens = tokens.filter(revoked_at__isnull=True).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))

    def when(value: Any) -> str:
        return value.strftime("%Y-%m-%d %H:%M") if value else "-"

    rows = [
        [t.prefix, t.tenant.slug, t.role, t.name or "-", when(t.created_at), when(t.expires_at), when(t.last_used_at),
         "revoked" if t.revoked_at else ("expired" if t.expires_at and t.expires_at <= now else "active")]
        for t in tokens
    ]  # fmt: skip
    headers = ["PREFIX", "TENANT", "ROLE", "NAME", "CREATED", "EXPIRES", "LAST USED", "STATE"]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def manage_main(argv: Sequence[str]) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "meshweb.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(["infermesh manage", *argv])
    return 0
