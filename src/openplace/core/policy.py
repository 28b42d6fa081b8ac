"""What moderators decided about placing: bans, protected areas, a frozen canvas.

A :class:`Policy` is an immutable value with a ``version`` that grows with every change.
The stores check each placement against the policy they hold (:meth:`Policy.refusal`);
in distributed mode the placement script also checks that this policy is still the
current one, so no placement is accepted under a policy that a moderator has replaced
(see ``distributed/store.py``). Pure: no I/O.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from openplace.core.board import Geometry

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class InvalidRect(ValueError):
    """A rectangle that is empty or not inside the board."""


class InvalidNetwork(ValueError):
    """Not an IP address or network in CIDR notation."""


@dataclass(frozen=True, slots=True)
class Rect:
    """A rectangle of pixels: ``x .. x+w-1`` by ``y .. y+h-1``."""

    x: int
    y: int
    w: int
    h: int

    def check(self, geometry: Geometry) -> Rect:
        """This rectangle, if it is non-empty and inside the board; else :class:`InvalidRect`."""
        if self.w < 1 or self.h < 1:
            raise InvalidRect("a rectangle's w and h must be at least 1")
        if not (self.x >= 0 and self.y >= 0 and self.x + self.w <= geometry.width
                and self.y + self.h <= geometry.height):  # fmt: skip
            raise InvalidRect(
                f"rectangle ({self.x}, {self.y}, {self.w}x{self.h}) is not inside the board "
                f"({geometry.width}x{geometry.height})"
            )
        return self

    def contains(self, x: int, y: int) -> bool:
        return self.x <= x < self.x + self.w and self.y <= y < self.y + self.h

    @property
    def pixels(self) -> int:
        return self.w * self.h

    def indexes(self, geometry: Geometry) -> Iterable[int]:
        """The pixel indexes inside, row by row."""
        for y in range(self.y, self.y + self.h):
            start = y * geometry.width + self.x
            yield from range(start, start + self.w)


@dataclass(frozen=True, slots=True)
class Area:
    """A protected rectangle, with the id that ``unprotect`` names it by."""

    id: int
    rect: Rect

    def public(self) -> dict[str, int]:
        r = self.rect
        return {"id": self.id, "x": r.x, "y": r.y, "w": r.w, "h": r.h}


@dataclass(frozen=True, slots=True)
class Ban:
    """A banned user (``kind="user"``, subject a user id) or address range
    (``kind="network"``, subject a CIDR network such as ``203.0.113.0/24``)."""

    kind: str
    subject: str
    reason: str
    by: str
    at: float
    expires_at: float | None = None

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


def parse_network(text: str) -> Network:
    """An address (``198.51.100.7``: that one address) or a CIDR network, normalised."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise InvalidNetwork(f"{text[:60]!r} is not an IP address or CIDR network") from exc


@functools.lru_cache(maxsize=65_536)  # on the placement path: parsing costs microseconds
def client_key(address: str) -> str:
    """The key that per-address limits count by: the address itself for IPv4, its /64
    for IPv6 (one subscriber's allocation), and the text as it is if it is no address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a placement is refused: ``code`` is ``frozen``, ``banned`` or ``protected``."""

    code: str
    message: str
    extra: Mapping[str, Any] = field(default_factory=dict)


FROZEN = Refusal("frozen", "the canvas is frozen: nothing can be placed now")
PROTECTED = Refusal("protected", "this pixel is in a protected area")


def banned(ban: Ban) -> Refusal:
    """The refusal for a banned user or address."""
    what = "you are" if ban.kind == "user" else "your address is"
    return Refusal(
        "banned", f"{what} banned: {ban.reason}",
        {"reason": ban.reason, "expires_at": ban.expires_at},
    )  # fmt: skip


@dataclass(frozen=True)
class Policy:
    """Bans, protected areas and the frozen flag, as of ``version`` (0: nothing decided)."""

    version: int = 0
    frozen: bool = False
    areas: tuple[Area, ...] = ()
    bans: tuple[Ban, ...] = ()
    _users: Mapping[str, Ban] = field(init=False, repr=False, compare=False)
    _nets: dict[int, dict[int, Ban]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        users = {b.subject: b for b in self.bans if b.kind == "user"}
        nets: dict[int, dict[int, Ban]] = {}  # prefix length -> network int -> ban
        for b in self.bans:
            if b.kind == "network":
                net = parse_network(b.subject)
                nets.setdefault(net.prefixlen + (96 if net.version == 4 else 0), {})[
                    int(net.network_address) if net.version == 6 else _v4_as_v6(net)
                ] = b
        object.__setattr__(self, "_users", MappingProxyType(users))
        object.__setattr__(self, "_nets", nets)

    def user_ban(self, user_id: str, now: float) -> Ban | None:
        ban = self._users.get(user_id)
        return ban if ban is not None and ban.active(now) else None

    def address_ban(self, address: str, now: float) -> Ban | None:
        """The active ban of a network that holds ``address``, if any."""
        nets = self._nets
        if not nets:
            return None
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        value = int(ip) if ip.version == 6 else (0xFFFF << 32) | int(ip)
        if ip.version == 6 and ip.ipv4_mapped is not None:
            value = (0xFFFF << 32) | int(ip.ipv4_mapped)
        for length, by_net in nets.items():
            mask = ((1 << 128) - 1) ^ ((1 << (128 - length)) - 1)
            ban = by_net.get(value & mask)
            if ban is not None and ban.active(now):
                return ban
        return None

    def protected(self, x: int, y: int) -> Area | None:
        for area in self.areas:
            if area.rect.contains(x, y):
                return area
        return None

    def refusal(self, user_id: str, address: str, x: int, y: int, now: float) -> Refusal | None:
        """Why this placement may not be made, or ``None``. The frozen canvas first, then
        bans, then protected areas."""
        if self.version == 0:
            return None
        if self.frozen:
            return FROZEN
        ban = self.user_ban(user_id, now) or self.address_ban(address, now)
        if ban is not None:
            return banned(ban)
        if self.areas and self.protected(x, y) is not None:
            return PROTECTED
        return None

    def public(self) -> dict[str, Any]:
        """What every visitor may know: ``{"frozen", "protected"}``."""
        return {"frozen": self.frozen, "protected": [a.public() for a in self.areas]}

    def active_bans(self, now: float) -> list[Ban]:
        return [b for b in self.bans if b.active(now)]


def _v4_as_v6(net: Network) -> int:
    return (0xFFFF << 32) | int(net.network_address)
