"""The audit log's entries: who did what, when, with which arguments and effect."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin action. ``id`` grows with time (0 until stored)."""

    ts: float  # unix seconds
    actor: str  # a moderator's name, or "cli" for the command line
    action: str  # e.g. "token", "revoke"
    args: dict[str, Any] = field(default_factory=dict)
    effect: dict[str, Any] = field(default_factory=dict)
    id: int = 0
