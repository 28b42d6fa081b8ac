"""What the handlers serve with: one typed container, built once by :mod:`openplace.app`.

``create_app`` builds an :class:`AppState` from the mode's
:class:`~openplace.services.Services` and sets it once on the app; every handler, the
placement fast path and the websocket endpoint read it through :func:`state_of`. A
collaborator the process's roles did not build (no ``hub`` without ``realtime``, no
``store`` or ``signer`` without ``api``) raises :class:`MissingRole` naming the role.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette

from openplace.observe.health import Drain

if TYPE_CHECKING:  # named for type checking only: no import cycles, no backend imports
    from starlette.requests import HTTPConnection

    from openplace.api.board_cache import BoardCache
    from openplace.auth.moderators import ModeratorSigner
    from openplace.auth.tokens import TokenSigner
    from openplace.config import Settings
    from openplace.history.timeline import Timeline
    from openplace.realtime.hub import Hub
    from openplace.storage.base import Moderation, Store

__all__ = ["AppState", "MissingRole", "state_of"]


class MissingRole(RuntimeError):
    """A collaborator asked of a process whose roles do not include the one that needs it."""

    def __init__(self, name: str, role: str) -> None:
        super().__init__(f"no {name}: this process does not serve the {role!r} role")


@dataclass(frozen=True, slots=True)
class AppState:
    """A process's collaborators. ``None`` where its roles lack one; read them through
    the properties, which raise :class:`MissingRole` instead of handing out ``None``."""

    settings: Settings
    roles: frozenset[str]
    store_: Store | None = None  # api
    signer_: TokenSigner | None = None  # api
    board_cache_: BoardCache | None = None  # api
    timeline_: Timeline | None = None  # api
    moderation_: Moderation | None = None  # api
    moderators_: ModeratorSigner | None = None  # api
    hub_: Hub | None = None  # realtime
    drain: Drain = field(default_factory=Drain)  # set when the process is told to stop

    @property
    def store(self) -> Store:
        if self.store_ is None:
            raise MissingRole("store", "api")
        return self.store_

    @property
    def signer(self) -> TokenSigner:
        if self.signer_ is None:
            raise MissingRole("signer", "api")
        return self.signer_

    @property
    def board_cache(self) -> BoardCache:
        if self.board_cache_ is None:
            raise MissingRole("board cache", "api")
        return self.board_cache_

    @property
    def timeline(self) -> Timeline:
        if self.timeline_ is None:
            raise MissingRole("timeline", "api")
        return self.timeline_

    @property
    def moderation(self) -> Moderation:
        if self.moderation_ is None:
            raise MissingRole("moderation", "api")
        return self.moderation_

    @property
    def moderators(self) -> ModeratorSigner:
        if self.moderators_ is None:
            raise MissingRole("moderator signer", "api")
        return self.moderators_

    @property
    def hub(self) -> Hub:
        if self.hub_ is None:
            raise MissingRole("hub", "realtime")
        return self.hub_


def state_of(where: Starlette | HTTPConnection | Mapping[str, Any]) -> AppState:
    """The :class:`AppState` of an app, or of a request, websocket or ASGI scope (each a
    mapping with the app under ``"app"``)."""
    app = where if isinstance(where, Starlette) else where["app"]
    state = app.state.openplace
    if not isinstance(state, AppState):
        raise TypeError(f"app.state.openplace is {type(state).__name__}, not AppState")
    return state
