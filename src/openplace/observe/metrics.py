"""Every Prometheus metric openplace exports, in groups by role.

The metrics are module-level objects registered in no registry; a process serves the
groups of its roles (:func:`registry`), so a persister does not export websocket
counters at zero, nor an API process the persister's role. The hot paths (a placement,
a broadcast) use children bound here once: an increment is one locked add, with no
label lookup per request. Values that are a process's state (clients, acks waiting,
the last seq broadcast) are read when scraped, through :func:`watch_hub` and friends,
so they cost nothing in between.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "registry", "render"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds: from a millisecond (embedded, a warm SQLite) to the ack timeout (10 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000)

# -- api: placements and the board ----------------------------------------------------

PLACEMENTS = Counter(
    "openplace_placements",
    "POST /api/pixel answers, by outcome: accepted, or the reason it was refused",
    ["outcome"],
    registry=None,
)
# The outcomes, and which APIError code counts under which (anything else: bad_request).
OUTCOMES = ("accepted", "cooldown", "banned", "frozen", "protected", "unavailable",
            "unconfirmed", "unauthorized", "too_large", "bad_request", "internal")  # fmt: skip
PLACED = {outcome: PLACEMENTS.labels(outcome) for outcome in OUTCOMES}
ACCEPTED = PLACED["accepted"]
BAD_REQUEST = PLACED["bad_request"]
INTERNAL = PLACED["internal"]
REFUSED_BY_CODE = {
    **{code: PLACED[code] for code in ("cooldown", "banned", "frozen", "protected",
                                       "unavailable", "unconfirmed", "unauthorized")},
    "body_too_large": PLACED["too_large"],
}  # fmt: skip
PLACEMENT_SECONDS = Histogram(
    "openplace_placement_seconds",
    "Time from a placement request to its 200 (distributed: including the wait for the "
    "persister's commit)",
    buckets=LATENCY_BUCKETS,
    registry=None,
)
BOARD_REQUESTS = Counter(
    "openplace_board_requests", "Current boards served by GET /api/board", registry=None
)
BOARD_CACHE_HITS = Counter(
    "openplace_board_cache_hits",
    "GET /api/board answered from the cached snapshot, without a read of its own",
    registry=None,
)
BOARD_STORE_READS = Counter(
    "openplace_board_store_reads", "Reads of the whole board from the store", registry=None
)
ACKS_WAITING = Gauge(
    "openplace_acks_waiting",
    "Accepted placements waiting for the persister's announcement (distributed)",
    registry=None,
)

# -- realtime: the fan-out -----------------------------------------------------------

WS_CLIENTS = Gauge("openplace_websocket_clients", "Websocket clients subscribed", registry=None)
FRAMES_SENT = Counter(
    "openplace_websocket_frames_sent", "Websocket frames written to clients", registry=None
)
BYTES_SENT = Counter(
    "openplace_websocket_bytes_sent", "Websocket frame bytes written to clients", registry=None
)
BROADCAST_SEQ = Gauge("openplace_broadcast_seq", "Seq of the last placement broadcast",
                      registry=None)  # fmt: skip
FANOUT_LAG = Gauge(
    "openplace_fanout_lag",
    "Placements committed but not yet broadcast by this process (newest committed seq it "
    "knows of minus the last seq broadcast)",
    registry=None,
)
SLOW_DROPPED = Counter(
    "openplace_slow_clients_dropped",
    "Clients closed with 4008 because they read too slowly",
    registry=None,
)
RESYNCS = Counter(
    "openplace_resyncs_sent", "resync messages sent to clients (reload the board)", registry=None
)

# -- persister -----------------------------------------------------------------------

PERSISTER_ROLES = ("starting", "standby", "active")
PERSISTER_ROLE = Gauge(
    "openplace_persister_role",
    "1 for this persister's role: starting (connecting), standby or active",
    ["role"],
    registry=None,
)
PG_COMMIT_SECONDS = Histogram(
    "openplace_pg_commit_seconds",
    "One PostgreSQL transaction of the persister (COPY and upserts of one batch)",
    buckets=COMMIT_BUCKETS,
    registry=None,
)
PG_COMMIT_BATCH = Histogram(
    "openplace_pg_commit_batch_size",
    "Placements per PostgreSQL transaction",
    buckets=BATCH_BUCKETS,
    registry=None,
)
COMMITTED_SEQ = Gauge(
    "openplace_persister_committed_seq", "Last seq committed to PostgreSQL", registry=None
)
ACCEPTED_SEQ = Gauge(
    "openplace_redis_seq", "Last seq Redis gave out (op:seq), read when scraped", registry=None
)
STREAM_LENGTH = Gauge(
    "openplace_stream_length", "Entries in the Redis stream op:stream, read when scraped",
    registry=None,
)  # fmt: skip
RESTORES = Counter("openplace_restores", "Restores of Redis from PostgreSQL", registry=None)
LAST_RESTORE = Gauge(
    "openplace_last_restore_timestamp_seconds", "When this persister last restored Redis",
    registry=None,
)  # fmt: skip

# -- embedded ------------------------------------------------------------------------

SQLITE_COMMIT_SECONDS = Histogram(
    "openplace_sqlite_commit_seconds",
    "One SQLite transaction of the embedded store (one batch of placements)",
    buckets=COMMIT_BUCKETS,
    registry=None,
)
SQLITE_COMMIT_BATCH = Histogram(
    "openplace_sqlite_commit_batch_size",
    "Placements per SQLite transaction",
    buckets=BATCH_BUCKETS,
    registry=None,
)

# -- every process -------------------------------------------------------------------

DEPENDENCY_UP = Gauge(
    "openplace_dependency_up",
    "1 if the dependency (redis, postgresql) answered this process's last check (when "
    "scraped or probed)",
    ["dependency"],
    registry=None,
)
READY = Gauge("openplace_ready", "1 if this process's last readiness check passed",
              registry=None)  # fmt: skip

GROUPS: dict[str, tuple[Collector, ...]] = {
    "api": (PLACEMENTS, PLACEMENT_SECONDS, BOARD_REQUESTS, BOARD_CACHE_HITS,
            BOARD_STORE_READS),
    "distributed_api": (ACKS_WAITING,),
    "realtime": (WS_CLIENTS, FRAMES_SENT, BYTES_SENT, BROADCAST_SEQ, FANOUT_LAG,
                 SLOW_DROPPED, RESYNCS),
    "persister": (PERSISTER_ROLE, PG_COMMIT_SECONDS, PG_COMMIT_BATCH, COMMITTED_SEQ,
                  ACCEPTED_SEQ, STREAM_LENGTH, RESTORES, LAST_RESTORE),
    "embedded": (SQLITE_COMMIT_SECONDS, SQLITE_COMMIT_BATCH),
    "distributed": (DEPENDENCY_UP,),
    "process": (READY,),
}  # fmt: skip


def groups_of(roles: Iterable[str], distributed: bool) -> list[str]:
    """The metric groups a process with ``roles`` serves (``persister`` is a role too)."""
    roles = set(roles)
    out = ["process"]
    if "api" in roles:
        out.append("api")
        out.append("distributed_api" if distributed else "embedded")
    if "realtime" in roles:
        out.append("realtime")
    if "persister" in roles:
        out.append("persister")
    if distributed:
        out.append("distributed")  # a dependency's gauge appears once it is checked
    return out


@functools.cache
def registry(roles: frozenset[str], distributed: bool) -> CollectorRegistry:
    """The registry of a process with ``roles``: their metric groups and the process's
    own metrics (memory, CPU, file descriptors, garbage collection)."""
    reg = CollectorRegistry(auto_describe=True)
    for group in groups_of(roles, distributed):
        for collector in GROUPS[group]:
            reg.register(collector)
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    GCCollector(registry=reg)
    return reg


def render(reg: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``reg``."""
    return generate_latest(reg)


# -- state read when scraped -----------------------------------------------------------


def watch_hub(clients: Callable[[], int], sent: Callable[[], int],
              lag: Callable[[], int]) -> None:  # fmt: skip
    """Read the fan-out's clients, last broadcast seq and lag when scraped."""
    WS_CLIENTS.set_function(clients)
    BROADCAST_SEQ.set_function(sent)
    FANOUT_LAG.set_function(lag)


def watch_acks(waiting: Callable[[], int]) -> None:
    ACKS_WAITING.set_function(waiting)


def dependency(name: str, up: bool) -> None:
    DEPENDENCY_UP.labels(name).set(1 if up else 0)


def persister_role(role: str) -> None:
    for each in PERSISTER_ROLES:
        PERSISTER_ROLE.labels(each).set(1 if each == role else 0)
