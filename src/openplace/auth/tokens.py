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
import string
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

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


_BASE64 = re.compile(r"[A-Za-z0-9_-]*")
_DIGIT = {c: i for i, c in enumerate(string.ascii_uppercase + string.ascii_lowercase
                                     + string.digits + "-_")}  # fmt: skip


def canonical_base64(part: str) -> bool:
    """``part`` is the one unpadded URL-safe base64 spelling of the bytes it decodes to:
    the alphabet's characters, a length that is not 1 more than a multiple of 4, and the
    bits of the last character that encode no byte zero. (The same answer as encoding
    what it decodes to and comparing; without the two conversions.)"""
    return _BASE64.fullmatch(part) is not None and _canonical_end(part)


def _canonical_end(part: str) -> bool:
    """Of a part in the URL-safe alphabet: its length and its last character's unused
    bits are those of the one spelling."""
    rest = len(part) % 4
    if rest == 1:
        return False
    if rest == 0:
        return True
    unused = 4 if rest == 2 else 2  # 2 characters carry 1 byte, 3 carry 2
    return _DIGIT[part[-1]] & ((1 << unused) - 1) == 0


def canonical_token(token: str) -> bool:
    """``token`` has the shape of a signed token, each part in its one spelling."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return False
    shape = _SHAPE.fullmatch(token)
    # The shape has checked the alphabet.
    return shape is not None and all(_canonical_end(part) for part in shape.groups())


class SignedLoads:
    """What tokens signed by ``serializer`` carry, each in its one spelling. The
    serializer's signer is made once (``Serializer.loads`` makes one per call)."""

    def __init__(self, serializer: URLSafeSerializer) -> None:
        self._serializer = serializer
        self._signer = serializer.make_signer()

    def __call__(self, token: str) -> Any:
        """What ``token`` carries, or :class:`InvalidToken`."""
        if not canonical_token(token):
            raise InvalidToken("invalid token")
        try:
            return self._serializer.load_payload(self._signer.unsign(token))
        except BadSignature:
            # Not chained: itsdangerous's message quotes the signature.
            raise InvalidToken("invalid token") from None


class TokenSigner:
    """Issues and verifies bearer tokens. The secret is never logged."""

    def __init__(self, secret: str, cache_size: int = 65_536) -> None:
        logs.hide(secret)
        self._s = URLSafeSerializer(secret, salt="openplace.session.v1")
        self._loads = SignedLoads(self._s)
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
        data = self._loads(token)
        if not isinstance(data, dict) or not isinstance(data.get("u"), str):
            raise InvalidToken("invalid token")
        return Identity(data["u"], str(data.get("r", "user")))
