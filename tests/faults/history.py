"""The history: every placement attempted, when it was invoked and completed, and how.

An operation ends in one of three ways:

- ``ok``: answered 200 with a seq. It must be in the log under that seq.
- ``fail``: definitely not placed. A 4xx, or the API's own 503 ``unavailable``
  ("nothing changed"), or a connection to nginx that could not be opened.
- ``unknown``: it may or may not have been placed. A timeout or a broken connection,
  503 ``unconfirmed`` (the API's, or nginx's when no backend answered: the backend may
  have placed it before it died), nginx's 503 ``unavailable`` (kept for older nginx
  configurations), any other 5xx.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["ok", "fail", "unknown"]

# nginx's own 503 body (distributed/nginx.conf.template, @unavailable).
NGINX_UNAVAILABLE = "no backend answered"


@dataclass(slots=True)
class Op:
    id: int
    writer: int
    index: int
    color: int
    invoke: float  # time.monotonic() before the request was sent
    complete: float | None = None  # ... and after its answer (or error) came back
    outcome: Outcome | None = None
    seq: int | None = None
    status: int | None = None  # HTTP status, None without an answer
    detail: str = ""


def classify(status: int, body: bytes) -> tuple[Outcome, int | None, str]:
    """Outcome, seq and a short description of an answer to ``POST /api/pixel``."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = {}
    seq = data.get("seq")
    if status == 200 and isinstance(seq, int) and seq > 0:
        return "ok", seq, ""
    error = str(data.get("error", ""))
    message = str(data.get("message", ""))
    detail = f"{status} {error or body[:60]!r}"
    if 400 <= status < 500:
        return "fail", None, detail
    if status == 503 and error == "unavailable" and NGINX_UNAVAILABLE not in message:
        return "fail", None, detail
    if status == 503 and error == "unavailable":
        return "unknown", None, detail + " (from nginx)"
    if status == 503 and error == "unconfirmed" and message.startswith("no answer from"):
        return "unknown", None, detail + " (from nginx)"
    return "unknown", None, detail


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)
    last_ok: float = 0.0  # when the latest ok answer came back

    def invoke(self, writer: int, index: int, color: int) -> Op:
        op = Op(len(self.ops), writer, index, color, time.monotonic())
        self.ops.append(op)
        return op

    def answer(self, op: Op, status: int, body: bytes) -> None:
        op.outcome, op.seq, op.detail = classify(status, body)
        op.status = status
        op.complete = time.monotonic()
        if op.outcome == "ok":
            self.last_ok = op.complete

    def fail(self, op: Op, detail: str) -> None:
        op.outcome, op.detail, op.complete = "fail", detail, time.monotonic()

    def unknown(self, op: Op, detail: str) -> None:
        op.outcome, op.detail, op.complete = "unknown", detail, time.monotonic()

    def rel(self, t: float | None) -> str:
        """``t`` as seconds since the history began, for reports."""
        return "-" if t is None else f"{t - self.t0:.3f}"
