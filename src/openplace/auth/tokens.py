"""Anonymous identities as signed tokens (itsdangerous, HMAC-SHA1 by default)."""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    role: str = "user"  # "admin" may moderate


class InvalidToken(Exception):
    """A token that is missing, malformed or not signed by us."""


class TokenSigner:
    """Issues and verifies bearer tokens. The secret is never logged."""

    def __init__(self, secret: str, cache_size: int = 65_536) -> None:
        self._s = URLSafeSerializer(secret, salt="openplace.session.v1")
        # A user sends the same token with every request: check each signature once.
        self._verified = functools.lru_cache(maxsize=cache_size)(self._verify)

    def new_identity(self) -> Identity:
        return Identity("u_" + secrets.token_urlsafe(9))

    def issue(self, identity: Identity) -> str:
        return self._s.dumps({"u": identity.user_id, "r": identity.role})

    def verify(self, token: str) -> Identity:
        """The identity a token was issued for, or :class:`InvalidToken`."""
        if not token or len(token) > 512:
            raise InvalidToken("missing or oversized token")
        return self._verified(token)

    def _verify(self, token: str) -> Identity:
        if not token or len(token) > 512:
            raise InvalidToken("missing or oversized token")
        try:
            data = self._s.loads(token)
        except BadSignature as exc:
            raise InvalidToken("invalid token") from exc
        if not isinstance(data, dict) or not isinstance(data.get("u"), str):
            raise InvalidToken("invalid token")
        return Identity(data["u"], str(data.get("r", "user")))
