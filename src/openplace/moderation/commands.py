"""``openplace admin``: moderation from the command line.

- ``token``, ``revoke``, ``audit`` work on the configured mode's store directly (the
  SQLite file in embedded mode, PostgreSQL in distributed mode), also while the canvas
  runs; ``token`` and ``revoke`` are recorded in the audit log as done by ``cli``.
- ``ban``, ``unban``, ``bans``, ``rollback``, ``fill``, ``protect``, ``unprotect``,
  ``freeze``, ``unfreeze`` call the running canvas's admin API (:mod:`openplace.api.admin`),
  so they do exactly what the API does, in every process. Where: ``--url``, else
  ``OPENPLACE_ADMIN_URL``, else this host at ``OPENPLACE_PORT``. As whom: ``--token``,
  else ``OPENPLACE_ADMIN_TOKEN``, else a five-minute token for the moderator ``--as``
  (default ``cli``) signed with the configured secret, so the audit log names them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from typing import Any

import httpx

from openplace.auth.moderators import Moderator, ModeratorSigner, check_name
from openplace.config import Settings
from openplace.core.audit import AuditEntry
from openplace.core.timeline import parse_duration
from openplace.storage.base import Moderation

MINTED_SECONDS = 300  # a token minted for one command
TIMEOUT_SECONDS = 120.0  # a big rollback takes a while (nginx waits as long)
API_VERBS = ("ban", "unban", "bans", "rollback", "fill", "protect", "unprotect", "freeze",
             "unfreeze")  # fmt: skip


class Failed(Exception):
    """What went wrong, for a person: printed as ``openplace: <message>``, exit 1."""


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
    admin = sub.add_parser(
        "admin",
        help="moderation: tokens, bans, rollback, the audit log",
        description="token, revoke and audit work on the configured store; the other "
        "verbs call the running canvas's admin API",
    )
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

    def api(name: str, help_: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help_)
        p.add_argument("--url", default=None,
                       help="the canvas (default: OPENPLACE_ADMIN_URL, else this host at "
                            "OPENPLACE_PORT)")  # fmt: skip
        p.add_argument("--token", default=None,
                       help="a moderator token (default: OPENPLACE_ADMIN_TOKEN, else one "
                            "made now with the configured secret)")  # fmt: skip
        p.add_argument("--as", dest="moderator", default="cli", metavar="NAME",
                       help="the moderator a token made here names (default cli)")  # fmt: skip
        return p

    ban = api("ban", "stop a user or a network placing (a network: making sessions too)")
    _subject(ban)
    ban.add_argument("--reason", required=True, help="why (1 to 200 characters)")
    ban.add_argument("--expires", default=None, help="lifted after this long, e.g. 1d "
                     "(default: never)")  # fmt: skip
    _subject(api("unban", "lift a user's or a network's ban"))
    api("bans", "list the bans in force")
    rollback = api("rollback", "undo users' or a network's placements since a time")
    rollback.add_argument("--user", dest="users", action="append", default=[], metavar="ID",
                          help="a user id (repeat for more)")  # fmt: skip
    rollback.add_argument(
        "--network", default=None, help="an address or CIDR network: the sessions made from it"
    )
    rollback.add_argument(
        "--since", required=True, help="a duration back from now (90s, 15m, 1h, 2d) or an ISO time"
    )
    rollback.add_argument("--rect", default=None, help="only inside X,Y,W,H")
    fill = api("fill", "set a rectangle to one colour (default: clear it)")
    fill.add_argument("--rect", required=True, help="X,Y,W,H")
    fill.add_argument("--color", type=int, default=None, help="0..15 (default 0, a clear)")
    api("protect", "refuse placements inside a rectangle").add_argument(
        "--rect", required=True, help="X,Y,W,H"
    )
    api("unprotect", "lift a protected area").add_argument(
        "id", type=int, help="the area's id (from protect)"
    )
    api("freeze", "make the canvas read-only")
    api("unfreeze", "let placements in again")
    admin.set_defaults(func=run)


def _subject(p: argparse.ArgumentParser) -> None:
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", default=None, help="a user id")
    who.add_argument("--network", default=None, help="an address or a CIDR network")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.verb not in API_VERBS:
        return asyncio.run(_run(args, settings))
    try:
        print(call(args, settings))
    except Failed as exc:
        print(f"openplace: {exc}", file=sys.stderr)
        return 1
    return 0


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


# -- the admin API -------------------------------------------------------------------


def call(args: argparse.Namespace, settings: Settings) -> str:
    """Make the request ``args`` describe; what it did, for a person (or :class:`Failed`)."""
    body = request_body(args)  # bad arguments fail before anything is sent
    url = admin_url(args.url, settings)
    token = args.token or os.environ.get("OPENPLACE_ADMIN_TOKEN")
    minted = not token
    if token and not token.isascii():
        raise Failed("a moderator token is ASCII: check --token or OPENPLACE_ADMIN_TOKEN")
    headers = {"Authorization": f"Bearer {token or mint_token(args.moderator, settings)}"}
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    try:
        with httpx.Client(base_url=url, timeout=TIMEOUT_SECONDS) as client:
            if body is None:
                r = client.get(f"/api/admin/{args.verb}", headers=headers)
            else:
                r = client.post(f"/api/admin/{args.verb}", json=body, headers=headers)
    except httpx.ConnectError as exc:
        raise Failed(f"cannot connect to the canvas at {url} ({exc}): is it running? "
                     "Say where it is with --url or OPENPLACE_ADMIN_URL") from exc  # fmt: skip
    except httpx.TimeoutException as exc:
        raise Failed(f"the canvas at {url} did not answer in {TIMEOUT_SECONDS:g} s") from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise Failed(f"the request to {url} failed: {exc}") from exc
    answer = _json(r)
    if r.status_code != 200 or answer is None:
        message = answer.get("message") if answer else None
        text = str(message) if message else f"the canvas at {url} answered {r.status_code}"
        if r.status_code == 401 and minted:
            text += (" (the token made here is signed with the configured secret: set the "
                     "canvas's OPENPLACE_SECRET, or give --token)")  # fmt: skip
        raise Failed(text)
    return describe(args.verb, answer)


def admin_url(given: str | None, settings: Settings) -> str:
    url = given or os.environ.get("OPENPLACE_ADMIN_URL")
    if url:
        return url.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}"


def mint_token(name: str, settings: Settings) -> str:
    """A token for the moderator ``name``, valid for :data:`MINTED_SECONDS`."""
    try:
        check_name(name)
    except ValueError as exc:
        raise Failed(f"--as: {exc}") from exc
    now = time.time()
    return ModeratorSigner(settings.resolve_secret()).issue(
        Moderator(name, now, now + MINTED_SECONDS)
    )


def parse_rect(text: str) -> dict[str, int]:
    """``X,Y,W,H`` as the API's rectangle."""
    parts = text.split(",")
    try:
        if len(parts) != 4:
            raise ValueError
        x, y, w, h = (int(p.strip()) for p in parts)
    except ValueError:
        raise Failed(f"--rect {text[:40]!r}: expected X,Y,W,H (four whole numbers, "
                     "e.g. 10,20,30,15)") from None  # fmt: skip
    return {"x": x, "y": y, "w": w, "h": h}


def request_body(args: argparse.Namespace) -> dict[str, Any] | None:
    """The JSON body of ``args.verb``'s POST (``None``: a GET)."""
    verb = args.verb
    if verb == "bans":
        return None
    if verb in ("ban", "unban"):
        body: dict[str, Any] = (
            {"user": args.user} if args.user is not None else {"network": args.network}
        )
        if verb == "ban":
            body["reason"] = args.reason
            if args.expires is not None:
                body["expires_in"] = args.expires
        return body
    if verb == "rollback":
        if not args.users and args.network is None:
            raise Failed("rollback: give --user (one or more) or --network, or both")
        body = {"since": args.since}
        if args.users:
            body["users"] = args.users
        if args.network is not None:
            body["network"] = args.network
        if args.rect is not None:
            body["rect"] = parse_rect(args.rect)
        return body
    if verb == "fill":
        body = {"rect": parse_rect(args.rect)}
        if args.color is not None:
            body["color"] = args.color
        return body
    if verb == "protect":
        return {"rect": parse_rect(args.rect)}
    if verb == "unprotect":
        return {"id": args.id}
    return {}  # freeze, unfreeze


def _json(r: httpx.Response) -> dict[str, Any] | None:
    try:
        data = r.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _seqs(a: dict[str, Any]) -> str:
    changed = int(a.get("pixels_changed") or 0)
    text = f"{changed} pixel{'s' * (changed != 1)} changed"
    if changed:
        text += f", seqs {a['first_seq']}..{a['last_seq']}"
    if a.get("pixels_left"):
        text += f", {a['pixels_left']} left (placed on meanwhile)"
    return text


def _rect_text(a: dict[str, Any]) -> str:
    return f"{a['x']},{a['y']},{a['w']},{a['h']}"


def describe(verb: str, a: dict[str, Any]) -> str:
    """An admin API answer, for a person."""
    audit = f" (audit #{a.get('audit_id')})"
    if verb == "bans":
        bans = a.get("bans") or []
        if not bans:
            return "no bans in force"
        return "\n".join(
            f"{b['kind']}\t{b['subject']}\tuntil {b['expires_at'] or 'lifted'}\t"
            f"by {b['by']}\t{b['reason']}"
            for b in bans
        )
    if verb == "ban":
        b = a["ban"]
        until = f"until {b['expires_at']}" if b["expires_at"] else "until lifted"
        return f"banned {b['kind']} {b['subject']} {until}: {b['reason']}{audit}"
    if verb in ("unban", "unprotect"):
        what = "protected area" if verb == "unprotect" else "ban"
        return (f"{what} lifted" if a.get("removed") else f"no such {what}: nothing to do") + audit
    if verb == "rollback":
        undone, users = int(a.get("placements_undone") or 0), int(a.get("users") or 0)
        return (f"rolled back {undone} placement{'s' * (undone != 1)} of {users} "
                f"user{'s' * (users != 1)}: {_seqs(a)}{audit}")  # fmt: skip
    if verb == "fill":
        return f"filled: {_seqs(a)}{audit}"
    if verb == "protect":
        area = a["area"]
        return (f"protected area {area['id']} at {_rect_text(area)}{audit}; "
                f"lift it with: openplace admin unprotect {area['id']}")  # fmt: skip
    if verb == "freeze":
        return f"the canvas is frozen: nothing can be placed until unfreeze{audit}"
    return f"the canvas is open to placements again{audit}"
