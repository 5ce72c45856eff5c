"""`infermesh node enroll NAME`: issue the credential a node's agent presents on the portal's agent socket."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def node_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="infermesh node", description="Enroll nodes of the mesh.")
    sub = parser.add_subparsers(dest="verb", required=True)
    enroll = sub.add_parser("enroll", help="issue a node credential (printed once; earlier ones are revoked)")
    enroll.add_argument("name", help="node name, as in the agent's config (node.id)")
    enroll.add_argument("--create", action="store_true", help="create the node if the portal does not know it")
    enroll.add_argument("--zone", default="zone-a", help="zone of a created node (created too if missing)")
    enroll.add_argument("--address", default="127.0.0.1:7070", help="agent gRPC address of a created node")
    enroll.add_argument("--roles", default="gpu", help="comma-separated roles of a created node")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "meshweb.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.exceptions import ValidationError
    from django.core.management import call_command

    from meshweb.core.services import object_create
    from meshweb.fleet.models import Node, Region, Zone
    from meshweb.meshlink.services import node_enroll
    from meshweb.tenancy.services import SYSTEM

    if settings.EMBEDDED:
        call_command("migrate", interactive=False, verbosity=0)
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
    _, plaintext = node_enroll(principal=SYSTEM, node=node)
    print(plaintext)
    return 0
