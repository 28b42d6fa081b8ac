"""Redis keys, the feed message format, and the atomic placement script."""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

PREFIX = "op:"
BOARD = PREFIX + "board"  # the packed board; GET is the wire format
SEQ = PREFIX + "seq"  # last assigned seq
EPOCH = PREFIX + "epoch"  # set by the persister once Redis holds a restored board
COMMITTED = PREFIX + "committed"  # last seq committed to PostgreSQL
STREAM = PREFIX + "stream"  # entry id "<seq>-0", field d = "index color user ts_ms"
FEED = PREFIX + "feed"  # pub/sub: committed runs, see encode_feed
ONLINE = PREFIX + "online"  # hash: realtime process id -> "count expires_ms"
RESTORE_REQUEST = PREFIX + "restore-request"
COOLDOWN = PREFIX + "cd:"  # + user id -> ts_ms of last placement, expires with the cooldown

# Many placements in one atomic step (API processes batch concurrent requests).
# KEYS: board, seq, stream, epoch, then each placement's cooldown key
# ARGV: cooldown_ms, then index, color, user for each placement
# Returns {-1} if the board is not restored yet, else {epoch, now_ms, r1, r2, ...}
# where r > 0 is the placement's seq and r <= 0 means cooling down since -r (ms).
PLACE_LUA = """
local epoch = redis.call('GET', KEYS[4])
if not epoch then return {-1} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cooldown = tonumber(ARGV[1])
local out = {epoch, now}
for i = 5, #KEYS do
  local a = (i - 5) * 3 + 2
  local last = redis.call('GET', KEYS[i])
  if last and now < tonumber(last) + cooldown then
    out[#out + 1] = -tonumber(last)
  else
    local seq = redis.call('INCR', KEYS[2])
    redis.call('BITFIELD', KEYS[1], 'SET', 'u4', '#' .. tonumber(ARGV[a]), ARGV[a + 1])
    local entry = ARGV[a] .. ' ' .. ARGV[a + 1] .. ' ' .. ARGV[a + 2] .. ' ' .. now
    redis.call('XADD', KEYS[3], seq .. '-0', 'd', entry)
    if cooldown > 0 then redis.call('SET', KEYS[i], now, 'PX', cooldown) end
    out[#out + 1] = seq
  end
end
return out
"""

# A consistent view of the board: bytes, head seq and epoch in one step.
BOARD_LUA = """
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]), redis.call('GET', KEYS[3])}
"""

_FEED_HEADER = struct.Struct(">QQ")


def encode_feed(epoch: int, first_seq: int, records: bytes) -> bytes:
    """A feed message: ``epoch: u64 | first_seq: u64 | records``."""
    return _FEED_HEADER.pack(epoch, first_seq) + records


def decode_feed(message: bytes) -> tuple[int, int, bytes]:
    epoch, first_seq = _FEED_HEADER.unpack_from(message)
    return epoch, first_seq, message[_FEED_HEADER.size :]


def parse_entry(fields: bytes) -> tuple[int, int, str, int]:
    """``(index, color, user, ts_ms)`` of a stream entry's ``d`` field."""
    index, color, user, ts = fields.split(b" ")
    return int(index), int(color), user.decode(), int(ts)


def text(reply: object) -> str:
    """A Redis string reply as text (redis-py types replies loosely)."""
    return reply.decode() if isinstance(reply, bytes) else str(reply)


class StreamEntry(NamedTuple):
    """One placement as the stream holds it: its seq and its ``d`` field."""

    seq: int
    data: bytes


def xrange_entries(reply: Any) -> list[StreamEntry]:
    """The entries of an ``XRANGE`` reply (redis-py types replies loosely)."""
    return [StreamEntry(int(entry_id.split(b"-")[0]), fields[b"d"]) for entry_id, fields in reply]


def xread_entries(reply: Any) -> list[StreamEntry]:
    """The entries of an ``XREAD`` reply for the one stream read (RESP2 or RESP3)."""
    if not reply:
        return []
    items = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    return xrange_entries(items)
