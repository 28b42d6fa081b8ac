"""Query parameters and headers the API reads the same way on every path."""

from __future__ import annotations

from starlette.requests import Request

from openplace.api.errors import APIError

MAX_SEQ = 2**53 - 1  # the largest seq a query may name: what a JavaScript number holds
MAX_SIZE = 2**31 - 1  # the largest region size a query may name (cut at the board)


def coordinate(request: Request, name: str) -> int:
    """Query parameter ``name``, given once, as ASCII decimal digits (``int()`` would also
    take ``1_0``, ``١٢``, signs and spaces)."""
    values = request.query_params.getlist(name)
    if len(values) != 1 or not (values[0].isascii() and values[0].isdigit()):
        raise APIError(
            400, "bad_coordinates", "query parameters x and y must each be given once, "
            "as decimal digits"
        )  # fmt: skip
    digits = values[0].lstrip("0")
    return int(digits or "0") if len(digits) <= 9 else 10**9  # 10**9: beyond any board


def query_value(request: Request, name: str) -> str | None:
    """Query parameter ``name``, if given (given twice: a 400)."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise APIError(400, "bad_request", f"query parameter {name} given more than once")
    return values[0] if values else None


def query_number(
    request: Request, name: str, code: str = "bad_request", maximum: int = MAX_SEQ
) -> int | None:
    """Query parameter ``name`` as ASCII decimal digits within ``0..maximum``, if given;
    else a 400 with ``code``."""
    value = query_value(request, name)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 20 or int(value) > maximum:
        raise APIError(400, code, f"{name} must be a decimal integer within 0..{maximum}")
    return int(value)


def matches_etag(request: Request, etag: str) -> bool:
    """Whether ``If-None-Match`` is ``*`` or lists ``etag`` (weak comparison): a 304."""
    inm = request.headers.get("if-none-match", "")
    tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
    return bool(inm) and (inm.strip() == "*" or etag in tags)


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header admits gzip (``gzip;q=0`` refuses it)."""
    for part in header.lower().split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() in ("gzip", "*"):
            q = params.strip().removeprefix("q=")
            try:
                return not params or float(q) > 0
            except ValueError:
                return False
    return False
