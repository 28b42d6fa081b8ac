"""Moderator identities: signed tokens of their own, issued by ``openplace admin token``.

A moderator token is ``<payload>.<signature>`` like a user's, signed with the same
secret under another salt, so neither kind verifies as the other. It names the
moderator, when it was issued and when it expires (or never). ``openplace admin revoke
NAME`` records a time: every token of NAME issued at or before it is refused, in every
process, on every admin request (:mod:`openplace.api.admin` reads the revocation from
the store each time; admin requests are few).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from itsdangerous import URLSafeSerializer

from openplace import logs
from openplace.auth.tokens import InvalidToken, SignedLoads

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class Moderator:
    name: str
    issued_at: float  # unix seconds
    expires_at: float | None  # None: never


def check_name(name: str) -> str:
    """A moderator's name: 1 to 64 of ``A-Z a-z 0-9 _ . -``."""
    if not NAME.fullmatch(name):
        raise ValueError("a moderator's name is 1 to 64 letters, digits, '_', '.' or '-'")
    return name


class ModeratorSigner:
    """Issues and verifies moderator tokens. The secret is never logged."""

    def __init__(self, secret: str) -> None:
        logs.hide(secret)
        self._s = URLSafeSerializer(secret, salt="openplace.moderator.v1")
        self._loads = SignedLoads(self._s)

    def issue(self, moderator: Moderator) -> str:
        check_name(moderator.name)
        return self._s.dumps(
            {"m": moderator.name, "iat": moderator.issued_at, "exp": moderator.expires_at}
        )

    def verify(self, token: str, now: float) -> Moderator:
        """The moderator a token names, or :class:`InvalidToken` (forged, malformed or
        expired; revocation is the caller's check, against the store)."""
        data = self._loads(token)
        if not (
            isinstance(data, dict)
            and isinstance(data.get("m"), str)
            and isinstance(data.get("iat"), int | float)
            and (data.get("exp") is None or isinstance(data.get("exp"), int | float))
        ):
            raise InvalidToken("invalid token")
        moderator = Moderator(data["m"], float(data["iat"]), data["exp"])
        if moderator.expires_at is not None and now >= moderator.expires_at:
            raise InvalidToken("this moderator token has expired")
        return moderator
