"""What a process serves with: built once at start by its mode, handed to the app."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from openplace.config import Settings
from openplace.storage.base import Archive, Feed, Moderation, Store

if TYPE_CHECKING:
    from openplace.realtime.hub import Hub

ALL_ROLES = frozenset({"api", "realtime", "web"})


class Resource(Protocol):
    """Something opened when the process starts and closed when it stops."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...


@dataclass
class Services:
    """A mode's collaborators for a set of roles (see ``embedded.build``,
    ``distributed.build``)."""

    store: Store | None = None  # the api role's
    feed: Feed | None = None  # the realtime role's
    archive: Archive | None = None  # the api role's: the history
    moderation: Moderation | None = None  # the api role's: revocations, the audit log
    resources: list[Resource] = field(default_factory=list)  # opened in order, closed reversed
    # The mode's own periodic work for the realtime role's hub.
    background: Callable[[Hub], list[asyncio.Task[None]]] | None = None


Build = Callable[[Settings, Collection[str]], Services]
