"""The CLI's client commands (`assigncore top`, `assigncore token ...`): where the server
is and who calls it, and the token commands, all on the Python client.

Every client command takes the same connection flags. Each value comes from, first to
last: the flag, the `[client]` table of `--config` (a server's TOML without one gives
its `[server] listen` address), the environment (ASSIGNCORE_SERVER, ASSIGNCORE_TOKEN,
ASSIGNCORE_TLS_CA / _CERT / _KEY), then the default (127.0.0.1:50051, plaintext).

    assigncore token issue --kind supervisor --team support --description "Sam's board"
    assigncore token list
    assigncore token rotate TOKEN_ID --overlap 3600
    assigncore token revoke TOKEN_ID
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from google.protobuf import json_format

from assigncore.client import AssignCoreError, Connection, load_client_config
from assigncore.client.connection import DEFAULT_SERVER, ENV_SERVER, ENV_TOKEN, env_settings
from assigncore.client.services import Admin

KEYS = ("server", "token", "tls_ca", "tls_cert", "tls_key", "tls_server_name")


def add_connection_arguments(parser: argparse.ArgumentParser, who: str) -> None:
    parser.add_argument(
        "--server",
        help=f"HOST:PORT of the server, or several comma-separated (default: ${ENV_SERVER}, "
        f"else {DEFAULT_SERVER})",
    )
    parser.add_argument("--token", help=f"{who} access token (default: ${ENV_TOKEN})")
    parser.add_argument("--config", help="a TOML with a [client] table (or the server's own TOML)")
    parser.add_argument("--tls-ca", help="CA certificate (PEM) of the server: use TLS")
    parser.add_argument("--tls-cert", help="client certificate (PEM), for mutual TLS")
    parser.add_argument("--tls-key", help="client private key (PEM), for mutual TLS")
    parser.add_argument("--tls-server-name", help="the name on the server's certificate")


def client_settings(args: argparse.Namespace) -> dict[str, str]:
    """The connection settings: flags, then --config, then the environment."""
    from_file = load_client_config(args.config) if getattr(args, "config", None) else {}
    from_env = env_settings()
    out: dict[str, str] = {}
    for key in KEYS:
        value = getattr(args, key, None) or from_file.get(key) or from_env.get(key)
        if value:
            out[key] = value
    out.setdefault("server", DEFAULT_SERVER)
    return out


def connection_of(args: argparse.Namespace) -> Connection:
    """The connection the flags, --config and the environment describe (raises
    ValueError or OSError with a message for the user)."""
    return Connection.from_settings(**client_settings(args))


def fail(command: str, message: str, code: int = 1) -> int:
    print(f"assigncore {command}: {message}", file=sys.stderr)
    return code


# ----------------------------------------------------------------- token


def add_token_parser(sub: Any) -> None:
    token = sub.add_parser("token", help="issue, list, rotate and revoke access tokens")
    actions = token.add_subparsers(dest="action", required=True)
    issue = actions.add_parser("issue", help="issue a token (its secret is shown once)")
    issue.add_argument("--kind", required=True, choices=["rep", "intake", "admin", "supervisor"])
    issue.add_argument("--rep", default="", help="the rep (rep tokens; a supervisor's own rep)")
    issue.add_argument("--team", action="append", default=[], help="a supervised team (repeat)")
    issue.add_argument("--description", default="", help="a note for humans")
    issue.add_argument("--ttl", type=float, help="seconds it is accepted (default: until revoked)")
    listing = actions.add_parser("list", help="list tokens (never their secrets)")
    rotate = actions.add_parser("rotate", help="replace a token by a new one")
    rotate.add_argument("token_id")
    rotate.add_argument(
        "--overlap", type=float, help="seconds the old one stays accepted (default: none)"
    )
    rotate.add_argument("--ttl", type=float, help="seconds the new one is accepted")
    revoke = actions.add_parser("revoke", help="revoke a token")
    revoke.add_argument("token_id")
    for p in (issue, listing, rotate, revoke):
        add_connection_arguments(p, "an admin's")
        p.add_argument("--json", action="store_true", help="as JSON")


def _record(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


async def _token(args: argparse.Namespace) -> int:
    async with connection_of(args) as conn:
        admin = Admin(conn)
        if args.action == "issue":
            reply = await admin.issue_token(
                args.kind,
                rep_id=args.rep,
                team_ids=args.team,
                description=args.description,
                ttl=args.ttl,
            )
            return _show_secret(args, reply)
        if args.action == "rotate":
            reply = await admin.rotate_token(args.token_id, overlap=args.overlap, ttl=args.ttl)
            return _show_secret(args, reply)
        if args.action == "revoke":
            await admin.revoke_token(args.token_id)
            if args.json:
                print(json.dumps({"revoked": args.token_id}))
            else:
                print(f"revoked {args.token_id}")
            return 0
        tokens = [_record(t) async for t in admin.tokens()]
    if args.json:
        print(json.dumps(tokens, indent=2))
        return 0
    print(f"{'TOKEN ID':<28} {'KIND':<22} {'REP':<16} {'TEAMS':<20} {'EXPIRES':<21} DESCRIPTION")
    for t in tokens:
        print(
            f"{t['token_id']:<28} {t.get('kind', ''):<22} {t.get('rep_id', ''):<16} "
            f"{','.join(t.get('team_ids', [])):<20} {t.get('expire_time', 'never'):<21} "
            f"{t.get('description', '')}"
        )
    return 0


def _show_secret(args: argparse.Namespace, reply: Any) -> int:
    record = _record(reply.access_token)
    if args.json:
        print(json.dumps({"access_token": record, "secret": reply.secret}, indent=2))
    else:
        print(f"token id: {record['token_id']}")
        print(f"kind:     {record.get('kind', '')}")
        if record.get("expire_time"):
            print(f"expires:  {record['expire_time']}")
        print(f"secret:   {reply.secret}")
        print("The secret is shown only now: keep it where the client reads it.")
    return 0


def token_command(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_token(args))
    except AssignCoreError as exc:
        return fail("token", f"{exc.code.name}: {exc.message}")
    except (OSError, ValueError) as exc:
        return fail("token", str(exc), 2)
