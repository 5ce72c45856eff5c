"""`infermesh ca init|issue|revoke|crl|passphrase` (an offline root CA in a directory, its key encrypted under a
passphrase) and `infermesh join` (enrollment)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from agents.argparsing import Parser, examples
from agents.security.ca import (
    ROLES,
    CaError,
    CaPassphraseError,
    CertificateAuthority,
    cert_pem,
    key_pem,
    load_certificate,
    new_key,
    read_passphrase_file,
)

# Exit codes: 1 for bad certificate material or files, 2 for usage errors and a missing or wrong CA passphrase.
EXIT_CA_ERROR = 1
EXIT_PASSPHRASE = 2


def _passphrase_options(parser: argparse.ArgumentParser, prefix: str = "", what: str = "the CA key") -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        f"--{prefix}passphrase-env", metavar="VAR", help=f"environment variable holding the passphrase of {what}"
    )
    group.add_argument(
        f"--{prefix}passphrase-file", metavar="FILE", help=f"file holding the passphrase of {what} (one line)"
    )


def read_passphrase(env_var: str | None, file: str | None, flag: str = "--passphrase") -> bytes | None:
    """The passphrase named on the command line; CaPassphraseError when the variable or file gives none."""
    if env_var:
        value = os.environ.get(env_var)
        if not value:
            raise CaPassphraseError(f"{flag}-env {env_var}: the variable is not set or empty")
        return value.encode()
    if file:
        return read_passphrase_file(file, f"{flag}-file")
    return None


def ca_main(argv: Sequence[str]) -> int:
    parser = Parser(
        prog="infermesh ca",
        description="The mesh certificate authority (offline root).",
        epilog=examples(
            "infermesh ca init --dir ca --trust-domain mesh.example",
            "infermesh ca issue --dir ca --node gpu-a1 --role agent --host 10.0.0.5 --out certs/gpu-a1",
            "infermesh ca issue --dir ca --node alice --role operator --out certs/alice   # for ctl",
            "infermesh ca revoke --dir ca --cert certs/gpu-a1/cert.pem --reason keyCompromise",
            "export INFERMESH_TOKEN=$(infermesh ca operator-token --dir ca --subject alice --value mesh-operators)",
        ),
    )
    sub = parser.add_subparsers(dest="verb", required=True)
    init = sub.add_parser("init", help="create a root CA in --dir (key encrypted when a passphrase is given)")
    init.add_argument("--dir", required=True, help="directory of the CA (created)")
    init.add_argument("--trust-domain", required=True, help="SPIFFE trust domain, e.g. mesh.example")
    init.add_argument("--days", type=int, default=3650, help="validity of the root certificate in days")
    _passphrase_options(init)
    issue = sub.add_parser("issue", help="issue an SVID (key + certificate) for a node")
    issue.add_argument("--dir", required=True, help="directory of the CA")
    issue.add_argument("--node", required=True, help="node (or operator) name in the SPIFFE ID")
    issue.add_argument("--role", action="append", choices=ROLES, default=[], help="repeat for several roles")
    issue.add_argument("--ttl-s", type=int, default=3600, help="certificate lifetime in seconds")
    issue.add_argument("--host", action="append", default=[], help="IP or DNS name the node serves on (repeat)")
    issue.add_argument("--out", required=True, help="directory for cert.pem, key.pem, ca.pem")
    _passphrase_options(issue)
    revoke = sub.add_parser("revoke", help="revoke a certificate (by serial or file) and rewrite crl.pem")
    revoke.add_argument("--dir", required=True, help="directory of the CA")
    group = revoke.add_mutually_exclusive_group(required=True)
    group.add_argument("--serial", help="hexadecimal serial")
    group.add_argument("--cert", help="the certificate file")
    revoke.add_argument("--reason", default="", help="RFC 5280 reason, e.g. keyCompromise (default: none)")
    _passphrase_options(revoke)
    crl = sub.add_parser("crl", help="print the current CRL (PEM)")
    crl.add_argument("--dir", required=True, help="directory of the CA")
    _passphrase_options(crl)
    rekey = sub.add_parser("passphrase", help="encrypt ca.key under a new passphrase (or change it)")
    rekey.add_argument("--dir", required=True, help="directory of the CA")
    _passphrase_options(rekey, what="the CA key as it is now (omit for an unencrypted key)")
    _passphrase_options(rekey, "new-", "the CA key from now on")
    token = sub.add_parser(
        "operator-token",
        help="print an operator's bearer JWT for ctl's admin calls, signed by a key kept in --dir (its JWKS, "
        "jwks.json, is what an agent's tls.jwt.jwks_file names)",
    )
    token.add_argument("--dir", required=True, help="directory of the signing key and jwks.json (the CA's)")
    token.add_argument("--subject", required=True, help="who the token speaks for (sub)")
    token.add_argument("--claim", default="groups", help="the claim agents read (tls.jwt.claim)")
    token.add_argument(
        "--value", action="append", required=True, help="its value, one of tls.jwt.operator_values (repeatable)"
    )
    token.add_argument("--issuer", default="infermesh-ca", help="iss, as the agent's tls.jwt.issuer")
    token.add_argument("--audience", default="infermesh-mesh", help="aud, as the agent's tls.jwt.audience")
    token.add_argument("--ttl-s", type=int, default=3600, help="lifetime in seconds")
    args = parser.parse_args(argv)
    if args.verb == "operator-token":
        from agents.security.devjwt import operator_token

        print(
            operator_token(
                args.dir, subject=args.subject, claim=args.claim, values=args.value, issuer=args.issuer,
                audience=args.audience, ttl_s=args.ttl_s,
            )
        )  # fmt: skip
        return 0
    try:
        passphrase = read_passphrase(args.passphrase_env, args.passphrase_file)
        if args.verb == "init":
            ca = CertificateAuthority.init(args.dir, args.trust_domain, days=args.days, passphrase=passphrase)
            state = "encrypted" if passphrase else "UNENCRYPTED: prefer --passphrase-env or --passphrase-file"
            print(f"CA for spiffe://{ca.trust_domain} in {args.dir} (ca.crt, ca.key {state}, crl.pem)")
        elif args.verb == "issue":
            ca = CertificateAuthority.load(args.dir, passphrase)
            key = new_key()
            cert = ca.issue(
                public_key=key.public_key(),
                node=args.node,
                roles=args.role,
                ttl_s=args.ttl_s,
                hosts=args.host or ["127.0.0.1", "localhost"],
            )
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "key.pem").touch(mode=0o600)
            (out / "key.pem").write_bytes(key_pem(key))
            (out / "cert.pem").write_bytes(cert_pem(cert))
            (out / "ca.pem").write_bytes(cert_pem(ca.cert))
            print(f"issued spiffe://{ca.trust_domain}/node/{args.node} serial {cert.serial_number:x} into {out}")
        elif args.verb == "revoke":
            ca = CertificateAuthority.load(args.dir, passphrase)
            if args.cert:
                serial = load_certificate(Path(args.cert).read_bytes()).serial_number
            else:
                try:
                    serial = int(args.serial, 16)
                except ValueError:
                    raise CaError(f"--serial {args.serial!r}: not a hexadecimal number") from None
            ca.revoke(serial, args.reason)
            print(f"revoked {serial:x}; {Path(args.dir) / 'crl.pem'} updated")
        elif args.verb == "crl":
            sys.stdout.write(CertificateAuthority.load(args.dir, passphrase).crl_pem().decode())
        else:
            new = read_passphrase(args.new_passphrase_env, args.new_passphrase_file, "--new-passphrase")
            if new is None:
                raise CaPassphraseError("give the new passphrase with --new-passphrase-env or --new-passphrase-file")
            CertificateAuthority.load(args.dir, passphrase).save_key(new)
            print(f"{Path(args.dir) / 'ca.key'} encrypted under the new passphrase")
    except CaPassphraseError as err:
        hint = ""
        if "no passphrase was given" in str(err):
            hint = " (pass --passphrase-env VAR or --passphrase-file FILE)"
        print(f"infermesh ca: {err}{hint}", file=sys.stderr)
        return EXIT_PASSPHRASE
    except (CaError, OSError) as err:
        print(f"infermesh ca: {err}", file=sys.stderr)
        return EXIT_CA_ERROR
    return 0


def join_main(argv: Sequence[str]) -> int:
    from agents.security.enroll import EnrollError, join

    j = Parser(
        prog="infermesh join",
        description="Enroll this node with a one-time join token: writes its SVID and key.",
        epilog=examples(
            "infermesh join --portal https://portal.example.com --token imj_... --node gpu-a1 --out /etc/infermesh/tls",
        ),
    )
    j.add_argument("--portal", required=True, help="portal base URL, e.g. https://portal.example.com")
    j.add_argument("--token", required=True, help="imj_... from POST /api/v1/join-tokens/")
    j.add_argument("--node", required=True, help="this node's name as registered in the portal")
    j.add_argument("--out", required=True, help="directory for cert.pem, key.pem, ca.pem")
    j.add_argument("--host", action="append", default=[], help="extra IP or DNS name for the certificate")
    args = j.parse_args(argv)
    try:
        info = join(args.portal, args.token, args.node, args.out, args.host)
    except (EnrollError, CaError, OSError) as err:
        print(f"infermesh join: {err}", file=sys.stderr)
        return 1
    print(f"joined as {info.spiffe_id} (roles: {', '.join(info.roles)}), valid until {info.not_after.isoformat()}")
    return 0
