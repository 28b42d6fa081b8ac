"""Structured JSON logs on stderr, with secrets masked.

Every line is redacted before it is written: passwords in URLs
(``redis://:***@host``), bearer tokens and anything that looks like an openplace token,
and every value passed to :func:`hide` (the token-signing secret, URL passwords from the
environment), whether in the message, a traceback or an extra field.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

_STD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}
MASK = "***"
# scheme://user:password@host: the password runs to the last "@" of the authority.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:\"'\\]*:)[^\s/?#\"'\\]*@")
_BEARER = re.compile(r"(?i)\b(bearer)(\s+)[^\s\"'\\,;]+")
# An itsdangerous token of ours: base64 of '{"...' (eyJ), a dot, a signature.
_TOKEN = re.compile(r"\.?eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{16,}")
_hidden: set[str] = set()


def hide(value: str | None) -> None:
    """Never write ``value`` in a log line (values under 4 characters are not hidden)."""
    if value and len(value) >= 4:
        _hidden.add(value)
        # As it appears inside a JSON string (quotes, backslashes, control characters).
        _hidden.add(orjson.dumps(value).decode()[1:-1])


def hide_url_password(url: str | None) -> None:
    """Hide the password of ``url``, as written and percent-decoded."""
    try:
        password = urlsplit(url or "").password
    except ValueError:
        return
    if password:
        hide(password)
        hide(unquote(password))


def hide_environment(env: Mapping[str, str]) -> None:
    """Hide every ``OPENPLACE_*`` secret, token or password, and URL passwords."""
    for name, value in env.items():
        if not name.startswith("OPENPLACE_"):
            continue
        if any(word in name for word in ("SECRET", "PASSWORD", "TOKEN")):
            hide(value)
        if "://" in value:
            hide_url_password(value)


def redact(text: str) -> str:
    """``text`` with every secret this module knows of, or recognises, masked."""
    for value in sorted(_hidden, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    text = _URL_PASSWORD.sub(rf"\g<1>{MASK}@", text)
    text = _BEARER.sub(rf"\g<1>\g<2>{MASK}", text)
    return _TOKEN.sub("[token]", text)


class JSONFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg, extra fields, exc; redacted."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _STD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(out, default=str).decode())


def _log_uncaught(
    kind: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("openplace").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback)


def setup(level: str = "INFO") -> None:
    """JSON logs at ``level`` on stderr; uncaught exceptions are logged (redacted) too."""
    hide_environment(os.environ)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
