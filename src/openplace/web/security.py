"""Security headers on every HTTP response: a strict Content-Security-Policy, no
sniffing, no framing, no referrer.

The page and its files get :data:`HEADERS`. The API's answers (``/api/...``) are JSON,
never documents: they get :data:`API_HEADERS`, no sniffing and a policy that allows
nothing at all, two short headers instead of the page's five (the placement answer is
written thousands of times a second and its headers are a measurable part of its cost).

The page passes the policy as it is: its scripts are ES modules and its styles one
stylesheet, all from the same origin, no inline code or ``style`` attributes, and its
websocket is same-origin (``'self'`` covers ``ws:``/``wss:`` on the page's own host and
port in CSP Level 3). ``distributed/nginx.conf.template`` sends the same headers with
the files nginx serves from disk; keep the two in step (``tests/test_security.py`` checks).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        # DOM sinks that parse strings as HTML or script (innerHTML, eval) are refused.
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
API_HEADERS: dict[str, str] = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
API_PREFIX = "/api/"


def _raw(headers: dict[str, str]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((name.lower().encode(), value.encode()) for name, value in headers.items())


RAW_HEADERS = _raw(HEADERS)
# The placement fast path, which runs outside this middleware, appends these itself.
API_RAW_HEADERS = _raw(API_HEADERS)


def headers_for(path: str) -> dict[str, str]:
    """The security headers of the answer to ``path``."""
    return API_HEADERS if path.startswith(API_PREFIX) else HEADERS


class SecurityHeaders:
    """Pure ASGI middleware: appends :data:`API_HEADERS` (paths under ``/api/``) or
    :data:`HEADERS` (everything else) to each HTTP response start.

    Websocket scopes pass straight through; the response's own header list is not
    mutated (a cached response may share it).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        extra = API_RAW_HEADERS if scope["path"].startswith(API_PREFIX) else RAW_HEADERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
