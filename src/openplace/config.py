"""All configuration, read once from environment variables with sane defaults."""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self, get_type_hints

ENV_PREFIX = "OPENPLACE_"
# Variables of the scripts, the test tooling and the admin CLI, not of the program.
RESERVED = ("OPENPLACE_VENV", "OPENPLACE_TEST_", "OPENPLACE_ADMIN_URL", "OPENPLACE_ADMIN_TOKEN")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "openplace"


COOLDOWN_BY = ("user", "address", "both")
# Who may read GET /metrics: loopback and the private networks (a scraper next to the
# processes); anyone else gets 404.
METRICS_FROM = "127.0.0.1/32,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(text: str) -> tuple[Network, ...]:
    """Comma-separated networks (``10.0.0.0/8``) or addresses; a ValueError names a bad one."""
    out = []
    for part in text.split(","):
        item = part.strip()
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a network or address") from None
    return tuple(out)


def address_in(address: str, allowed: tuple[Network, ...]) -> bool:
    """Whether ``address`` (IPv4, IPv6 or IPv4-mapped IPv6) is in one of ``allowed``."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in allowed)


@dataclass(frozen=True, slots=True)
class Settings:
    """Runtime settings. Build with :meth:`from_env`; override with :meth:`with_`."""

    width: int = 1000
    height: int = 1000
    cooldown_seconds: float = 300.0
    # Whose cooldown a placement waits for: the user's, the address's (IPv6: its /64),
    # or both. "both" stops a bot that makes a new session for every placement.
    cooldown_by: str = "both"
    data_dir: Path = field(default_factory=_default_data_dir)
    secret: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    # Placements a reconnecting client may be behind and still be replayed to;
    # further behind, it is told to resync (the board is ~100k placements in bytes).
    replay_limit: int = 200_000
    # A keyframe (compressed board) after this many placements, kept for the whole
    # history: the board at any seq costs one keyframe plus at most this many log rows,
    # and a restart reads no more than that either.
    snapshot_every: int = 25_000
    # Placements per GET /api/history answer, at most.
    history_max_records: int = 100_000
    # The board served by GET /api/board is refreshed at most this often (seconds).
    # A slightly older snapshot is safe: it carries its own X-Seq.
    board_refresh_seconds: float = 0.05
    board_max_age_seconds: int = 1
    # Websocket limits.
    ws_max_connections_per_ip: int = 32
    ws_send_buffer_bytes: int = 4 * 1024 * 1024
    ws_max_message_bytes: int = 1024
    online_interval_seconds: float = 2.0
    # Live frames are gathered so that flushing (clients x measured time of a send)
    # takes at most this share of each gather-and-flush cycle of a realtime process, so
    # with more clients (or slower sends) batches grow instead of writes queueing up.
    ws_send_share: float = 0.5
    ws_max_batch_delay_seconds: float = 1.0
    # Proxies whose X-Forwarded-For is believed (comma-separated addresses; as uvicorn's
    # forwarded_allow_ips). Behind nginx on the same host, the default is right.
    trusted_proxies: str = "127.0.0.1"
    # HTTP limits.
    max_body_bytes: int = 1024
    sessions_per_ip_per_minute: int = 30
    sessions_per_address_per_day: int = 300
    # Pixels one moderator action (rollback, fill) may write, at most.
    admin_max_pixels: int = 250_000
    # HTTP server limits (api/limits.py), in every mode: the request line and headers
    # (else 431), the time to send them (from connect or first byte, else 408 or a
    # silent close), the time to send a declared body, how long an idle keep-alive
    # connection stays open, how long a response may wait for a client that does not
    # read, and the open connections of one address (else 429; from trusted proxies,
    # the requests in progress of one forwarded address).
    http_max_header_bytes: int = 8 * 1024
    http_header_timeout_seconds: float = 10.0
    http_body_timeout_seconds: float = 10.0
    http_keepalive_timeout_seconds: float = 5.0
    http_send_timeout_seconds: float = 30.0
    http_max_connections_per_ip: int = 256
    # How long GET /api/pixel and GET /api/me wait for the store (else 503).
    store_read_timeout_seconds: float = 5.0
    # Distributed mode: how long a placement may wait to be confirmed durable.
    ack_timeout_seconds: float = 10.0
    # Distributed mode: an API process told to stop (SIGTERM) stops listening and answers
    # this long more on its connections, closing each after its answer, not ready, so
    # nginx (whose idle connections to the API last 2 s) moves to the others; a
    # realtime process waits at most this long for its clients' last frames.
    drain_seconds: float = 3.0
    # Distributed mode (unset: embedded).
    redis_url: str | None = None
    database_url: str | None = None
    # Networks whose clients may read GET /metrics (comma-separated); others get 404.
    metrics_from: str = METRICS_FROM
    # The persister's HTTP port for /metrics, /livez and /readyz (0: none).
    persister_metrics_port: int = 9464
    # DEBUG, INFO, WARNING or ERROR (the command's --log-level overrides it).
    log_level: str = "INFO"
    # A read-only folder of template images (png, gif, webp, jpeg) that the operators
    # curate, served at /templates/<name> for the page's template overlay and its share
    # links; unset: <data_dir>/templates (see templates_path). A missing folder serves
    # nothing (404), it stops nothing.
    templates_dir: Path | None = None

    @property
    def distributed(self) -> bool:
        """Redis + PostgreSQL mode (both URLs set); otherwise embedded."""
        return bool(self.redis_url and self.database_url)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def templates_path(self) -> Path:
        """The folder served at ``/templates/``: ``templates_dir``, or ``<data_dir>/templates``."""
        return self.templates_dir if self.templates_dir is not None else self.data_dir / "templates"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        """Read the ``OPENPLACE_*`` variables; one that is not a setting is an error.

        ``OPENPLACE_VENV`` and ``OPENPLACE_TEST_*`` are the tooling's, not the program's.
        """
        env = os.environ if env is None else env
        known = {ENV_PREFIX + name.upper(): name for name in cls.__dataclass_fields__}
        unknown = sorted(k for k in env if k.startswith(ENV_PREFIX)
                         and k not in known and not k.startswith(RESERVED))  # fmt: skip
        if unknown:
            raise ValueError("; ".join(_unknown(name, known) for name in unknown))
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for var, name in known.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                values[name] = PARSERS[hints[name]](raw)
            except ValueError as exc:
                raise ValueError(f"{var}: {exc}") from None
        settings = cls(**values)
        settings.validate()
        return settings

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields changed (validated)."""
        s = replace(self, **changes)  # type: ignore[arg-type]
        s.validate()
        return s

    def validate(self) -> None:
        if not (1 <= self.width <= 10_000 and 1 <= self.height <= 10_000):
            raise ValueError("OPENPLACE_WIDTH and OPENPLACE_HEIGHT must be within 1..10000")
        if self.pixels % 2:
            raise ValueError("width * height must be even (two pixels per byte)")
        if bool(self.redis_url) != bool(self.database_url):
            raise ValueError(
                "distributed mode needs both OPENPLACE_REDIS_URL and OPENPLACE_DATABASE_URL"
            )
        positive = ("replay_limit", "snapshot_every", "history_max_records",
                    "ws_max_connections_per_ip", "ws_send_buffer_bytes", "ws_max_message_bytes",
                    "max_body_bytes",
                    "sessions_per_ip_per_minute", "sessions_per_address_per_day",
                    "admin_max_pixels", "http_max_connections_per_ip")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{ENV_PREFIX}{name.upper()} must be >= 1")
        if not 1024 <= self.http_max_header_bytes <= 1024 * 1024:
            raise ValueError("OPENPLACE_HTTP_MAX_HEADER_BYTES must be within 1024..1048576")
        timeouts = ("http_header_timeout_seconds", "http_body_timeout_seconds",
                    "http_keepalive_timeout_seconds", "http_send_timeout_seconds",
                    "store_read_timeout_seconds")  # fmt: skip
        for name in timeouts:
            if not 0 < getattr(self, name) <= 3600:
                raise ValueError(f"{ENV_PREFIX}{name.upper()} must be > 0 and <= 3600")
        if not 0 < self.ws_send_share <= 1:
            raise ValueError("OPENPLACE_WS_SEND_SHARE must be > 0 and <= 1")
        if not 0 <= self.ws_max_batch_delay_seconds <= 10:
            raise ValueError("OPENPLACE_WS_MAX_BATCH_DELAY_SECONDS must be within 0..10")
        if not 0 <= self.drain_seconds <= 600:
            raise ValueError("OPENPLACE_DRAIN_SECONDS must be within 0..600")
        if self.ack_timeout_seconds <= 0:
            raise ValueError("OPENPLACE_ACK_TIMEOUT_SECONDS must be > 0")
        if self.cooldown_seconds < 0:
            raise ValueError("OPENPLACE_COOLDOWN_SECONDS must be >= 0")
        if self.cooldown_by not in COOLDOWN_BY:
            raise ValueError(f"OPENPLACE_COOLDOWN_BY must be one of {', '.join(COOLDOWN_BY)}")
        try:
            networks(self.metrics_from)
        except ValueError as exc:
            raise ValueError(f"OPENPLACE_METRICS_FROM: {exc}") from None
        if not 0 <= self.persister_metrics_port <= 65535:
            raise ValueError("OPENPLACE_PERSISTER_METRICS_PORT must be within 0..65535")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ValueError(f"OPENPLACE_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")

    def resolve_secret(self) -> str:
        """The token-signing secret: configured, or generated once and kept in the data dir."""
        if self.secret:
            return self.secret
        path = self.data_dir / "secret"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(32)
        tmp = path.with_name(f".secret.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value)
        try:
            os.link(tmp, path)  # atomic; if another process won the race, use its secret
        except FileExistsError:
            value = path.read_text().strip()
        finally:
            tmp.unlink()
        return value

    def __repr__(self) -> str:  # never print the secret, nor a password in a URL
        from openplace.logs import redact

        shown = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "secret"}
        return redact(f"Settings({shown}, secret={'set' if self.secret else 'unset'})")


def _int(raw: str) -> int:
    text = raw.strip()
    digits = text[1:] if text[:1] in "+-" else text
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        raise ValueError(f"expected a whole number, got {raw!r}")
    return int(text)


def _float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"expected a number, got {raw!r}") from None
    if not math.isfinite(value) or "_" in raw:
        raise ValueError(f"expected a finite number, got {raw!r}")
    return value


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


def _text(raw: str) -> str:
    return raw


# One parser per field type (tests check that every field has one).
PARSERS: dict[object, Callable[[str], object]] = {
    int: _int,
    float: _float,
    Path: _path,
    Path | None: _path,
    str: _text,
    str | None: _text,
}


def _unknown(name: str, known: dict[str, str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{name} is not a setting{hint}"
