"""`infermesh node enroll NAME`: issue the credential a node's agent presents on the portal's agent socket."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from agents.argparsing import Parser, examples


def node_main(argv: Sequence[str]) -> int:
    parser = Parser(
        prog="infermesh node",
        description="Enroll, list and delete the nodes of the mesh.",
        epilog=examples(
            "infermesh node enroll gpu-a1 --create --zone zone-a --address 10.0.0.5:7070 > gpu-a1.credential",
            "infermesh node list",
            "infermesh node delete gpu-a1",
        ),
    )
    sub = parser.add_subparsers(dest="verb", required=True)
    enroll = sub.add_parser("enroll", help="issue a node credential (printed once; earlier ones are revoked)")
    enroll.add_argument("name", help="node name, as in the agent's config (node.id)")
    enroll.add_argument("--create", action="store_true", help="create the node if the portal does not know it")
    enroll.add_argument("--zone", default="zone-a", help="zone of a created node (created too if missing)")
    enroll.add_argument("--address", default="127.0.0.1:7070", help="agent gRPC address of a created node")
    enroll.add_argument("--roles", default="gpu", help="comma-separated roles of a created node")
    sub.add_parser("list", help="list the portal's nodes with zone, status and last heartbeat")
    delete = sub.add_parser("delete", help="delete a node and revoke its certificates")
    delete.add_argument("name", help="node name")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "meshweb.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.exceptions import ValidationError
    from django.core.management import call_command

    from meshweb.fleet.models import Node, Region, Zone
    from meshweb.identity.credentials import node_credential_issue
    from meshweb.tenancy.scoped.writes import object_create
    from meshweb.tenancy.services import SYSTEM

    if settings.EMBEDDED:
        call_command("migrate", interactive=False, verbosity=0)
    if args.verb == "list":
        return _node_list()
    if args.verb == "delete":
        return _node_delete(args.name)
    node = Node.objects.filter(name=args.name).first()
    if node is None:
        if not args.create:
            print(f"infermesh node: no node {args.name!r} (add --create to create it)", file=sys.stderr)
            return 1
        try:
            zone = Zone.objects.filter(name=args.zone).first()
            if zone is None:
                region = Region.objects.first() or object_create(
                    principal=SYSTEM, model=Region, data={"name": "region-a"}
                )
                zone = object_create(principal=SYSTEM, model=Zone, data={"name": args.zone, "region": region})
            roles = [r.strip() for r in args.roles.split(",") if r.strip()]
            node = object_create(
                principal=SYSTEM,
                model=Node,
                data={"name": args.name, "address": args.address, "zone": zone, "roles": roles},
            )
        except ValidationError as exc:
            print(f"infermesh node: {exc.message_dict if hasattr(exc, 'message_dict') else exc}", file=sys.stderr)
            return 1
    _, plaintext = node_credential_issue(principal=SYSTEM, node=node)
    print(plaintext)
    return 0


def _node_list() -> int:
    from meshweb.fleet.models import Node

    def when(value: object) -> str:
        return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"  # type: ignore[attr-defined]

    rows = [
        [n.name, n.zone.name, n.status, ",".join(n.roles) or "-", n.address, when(n.last_heartbeat_at)]
        for n in Node.objects.select_related("zone").order_by("name")
    ]
    headers = ["NAME", "ZONE", "STATUS", "ROLES", "ADDRESS", "LAST HEARTBEAT"]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _node_delete(name: str) -> int:
    from django.db.models import ProtectedError

    from meshweb.fleet.models import Node
    from meshweb.identity.mesh import node_delete
    from meshweb.tenancy.services import SYSTEM

    node = Node.objects.filter(name=name).first()
    if node is None:
        print(f"infermesh node: no node {name!r} (see infermesh node list)", file=sys.stderr)
        return 1
    try:
        node_delete(principal=SYSTEM, node=node)
    except ProtectedError as exc:
        print(f"infermesh node: {name} is still referenced ({exc.args[0]})", file=sys.stderr)
        return 1
    print(f"deleted node {name} and revoked its certificates")
    return 0
