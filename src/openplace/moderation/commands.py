"""``openplace admin``: moderator tokens and the audit log from the command line, on the
configured mode's store (the SQLite file in embedded mode, PostgreSQL in distributed
mode), also while the canvas runs. Every action is recorded in the audit log as done by
``cli``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from openplace.auth.moderators import Moderator, ModeratorSigner, check_name
from openplace.config import Settings
from openplace.core.audit import AuditEntry
from openplace.core.timeline import parse_duration
from openplace.storage.base import Moderation


def moderation_for(settings: Settings) -> Moderation:
    """The configured mode's moderation store (not yet opened)."""
    if settings.distributed:
        from openplace.distributed.moderation import PostgresModeration

        return PostgresModeration(settings.database_url or "")
    from openplace.embedded import database_path
    from openplace.embedded.moderation import SqliteModeration

    return SqliteModeration(database_path(settings))


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``openplace admin ...`` on the ``openplace`` parser."""
    admin = sub.add_parser("admin", help="moderation: moderator tokens, the audit log")
    verbs = admin.add_subparsers(dest="verb", required=True)
    token = verbs.add_parser("token", help="print a new moderator token")
    token.add_argument("--name", required=True, help="the moderator's name")
    token.add_argument(
        "--expires", default=None, help="valid for this long, e.g. 12h or 30d (default: ever)"
    )
    revoke = verbs.add_parser("revoke", help="refuse every token of a moderator issued so far")
    revoke.add_argument("name", help="the moderator's name")
    log = verbs.add_parser("audit", help="print the audit log, newest first")
    log.add_argument("--limit", type=int, default=50, help="entries (default 50)")
    admin.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_run(args, settings))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    moderation = moderation_for(settings)
    await moderation.open()
    try:
        now = time.time()
        if args.verb == "token":
            name = check_name(args.name)
            expires = None if args.expires is None else now + parse_duration(args.expires)
            token = ModeratorSigner(settings.resolve_secret()).issue(Moderator(name, now, expires))
            await moderation.record(AuditEntry(now, "cli", "token",
                                               {"name": name, "expires_at": expires}))  # fmt: skip
            print(token)
        elif args.verb == "revoke":
            name = check_name(args.name)
            await moderation.revoke(name, now)
            await moderation.record(AuditEntry(now, "cli", "revoke", {"name": name}))
            print(f"openplace: every token of {name} issued so far is refused now",
                  file=sys.stderr)  # fmt: skip
        else:
            if not 1 <= args.limit <= 10_000:
                raise ValueError("--limit must be within 1..10000")
            for e in await moderation.audit(None, args.limit):
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.ts))
                print(f"{e.id}\t{when}\t{e.actor}\t{e.action}\t{e.args}\t{e.effect}")
        return 0
    finally:
        await moderation.close()
