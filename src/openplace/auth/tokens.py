"""Anonymous identities as signed tokens (itsdangerous, HMAC-SHA1 by default).

A token is ``<payload>.<signature>``, each part unpadded URL-safe base64. itsdangerous
alone is lenient when it decodes: it accepts ``=`` padding, the ``+/`` alphabet, bytes it
cannot decode (skipped) and any value of the unused low bits of the last character, so
one signature has many spellings. :meth:`TokenSigner.verify` accepts only the spelling
:meth:`TokenSigner.issue` produces: exactly one string verifies per identity.
"""

from __future__ import annotations

import functools
import re
import secrets
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadData, BadSignature, URLSafeSerializer
from itsdangerous.encoding import base64_decode, base64_encode

from openplace import logs

MAX_TOKEN_CHARS = 512
# [.]payload.signature; a leading dot marks a compressed payload (itsdangerous).
_SHAPE = re.compile(r"\.?([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    role: str = "user"  # "admin" may moderate


class InvalidToken(Exception):
    """A token that is missing, malformed or not signed by us."""


def canonical_base64(part: str) -> bool:
    """``part`` is the one unpadded URL-safe base64 spelling of the bytes it decodes to."""
    try:
        return base64_encode(base64_decode(part)) == part.encode("ascii")
    except (BadData, UnicodeEncodeError):
        return False


def canonical_token(token: str) -> bool:
    """``token`` has the shape of a signed token, each part in its one spelling."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return False
    shape = _SHAPE.fullmatch(token)
    return shape is not None and all(canonical_base64(part) for part in shape.groups())


def loads_signed(serializer: URLSafeSerializer, token: str) -> Any:
    """What ``token`` carries, if it is in its one spelling and signed by ``serializer``;
    else :class:`InvalidToken`."""
    if not canonical_token(token):
        raise InvalidToken("invalid token")
    try:
        return serializer.loads(token)
    except BadSignature:
        # Not chained: itsdangerous's message quotes the signature.
        raise InvalidToken("invalid token") from None


class TokenSigner:
    """Issues and verifies bearer tokens. The secret is never logged."""

    def __init__(self, secret: str, cache_size: int = 65_536) -> None:
        logs.hide(secret)
        self._s = URLSafeSerializer(secret, salt="openplace.session.v1")
        # A user sends the same token with every request: check each signature once.
        self._verified = functools.lru_cache(maxsize=cache_size)(self._verify)

    def new_identity(self) -> Identity:
        return Identity("u_" + secrets.token_urlsafe(9))

    def issue(self, identity: Identity) -> str:
        return self._s.dumps({"u": identity.user_id, "r": identity.role})

    def verify(self, token: str) -> Identity:
        """The identity a token was issued for, or :class:`InvalidToken`."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("missing or oversized token")
        return self._verified(token)

    def _verify(self, token: str) -> Identity:
        data = loads_signed(self._s, token)
        if not isinstance(data, dict) or not isinstance(data.get("u"), str):
            raise InvalidToken("invalid token")
        return Identity(data["u"], str(data.get("r", "user")))
