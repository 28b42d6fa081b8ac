"""Security headers on every HTTP response: a strict Content-Security-Policy, no
sniffing, no framing, no referrer.

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
_RAW = [(name.lower().encode(), value.encode()) for name, value in HEADERS.items()]


class SecurityHeaders:
    """Pure ASGI middleware: appends :data:`HEADERS` to each HTTP response start.

    Websocket scopes pass straight through; the response's own header list is not
    mutated (a cached response may share it).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *_RAW]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
