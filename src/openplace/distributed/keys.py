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

POLICY = PREFIX + "policy"  # the version of moderation's policy in force
POLICY_PUBLIC = PREFIX + "policy:public"  # its public part, JSON, for realtime processes
ADDRESS_COOLDOWN = PREFIX + "cda:"  # + client key -> ts_ms of the address's last placement
SESSIONS = PREFIX + "sessions:"  # + "m|d:<client key>:<window>" -> sessions made

# Many placements in one atomic step (API processes batch concurrent requests).
# KEYS: board, seq, stream, epoch, policy, then each placement's user and address
#   cooldown keys
# ARGV: user cooldown ms, address cooldown ms (0: not counted), the policy version the
#   placements were checked against, then index, color, user for each placement
# Returns {-1} if the board is not restored yet, {-2, version} if the policy has
# changed (check again under the new one), else {epoch, now_ms, r1, r2, ...} where
# r > 0 is the placement's seq and r < 0 means cooling down until -r (ms).
PLACE_LUA = """
local epoch = redis.call('GET', KEYS[4])
if not epoch then return {-1} end
local policy = redis.call('GET', KEYS[5]) or '0'
if policy ~= ARGV[3] then return {-2, policy} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local by_user, by_address = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {epoch, now}
for i = 0, (#KEYS - 5) / 2 - 1 do
  local user_key, address_key = KEYS[6 + 2 * i], KEYS[7 + 2 * i]
  local a = 4 + 3 * i
  local wait = 0
  if by_user > 0 then
    local last = redis.call('GET', user_key)
    if last then wait = tonumber(last) + by_user end
  end
  if by_address > 0 then
    local last = redis.call('GET', address_key)
    if last and tonumber(last) + by_address > wait then wait = tonumber(last) + by_address end
  end
  if now < wait then
    out[#out + 1] = -wait
  else
    local seq = redis.call('INCR', KEYS[2])
    redis.call('BITFIELD', KEYS[1], 'SET', 'u4', '#' .. tonumber(ARGV[a]), ARGV[a + 1])
    local entry = ARGV[a] .. ' ' .. ARGV[a + 1] .. ' ' .. ARGV[a + 2] .. ' ' .. now
    redis.call('XADD', KEYS[3], seq .. '-0', 'd', entry)
    if by_user > 0 then redis.call('SET', user_key, now, 'PX', by_user) end
    if by_address > 0 then redis.call('SET', address_key, now, 'PX', by_address) end
    out[#out + 1] = seq
  end
end
return out
"""

# A moderator's placements as one contiguous run, leaving out pixels placed on after
# the seq the run was planned at (their entries are still in the stream: nothing after
# the committed seq is trimmed).
# KEYS: board, seq, stream, epoch
# ARGV: after, user, then index, color for each placement
# Returns {-1} if the board is not restored yet, {-3} if the placements after `after`
# are not all in the stream (plan again), else {epoch, now_ms, first_seq, count,
# index, color} (the last two: the last placement written, if any).
RUN_LUA = """
local epoch = redis.call('GET', KEYS[4])
if not epoch then return {-1} end
local head = tonumber(redis.call('GET', KEYS[2]) or '0')
local after = tonumber(ARGV[1])
if head < after then return {-3} end
local placed = {}
if head > after then
  local entries = redis.call('XRANGE', KEYS[3], (after + 1) .. '-0', head .. '-0')
  if #entries ~= head - after then return {-3} end
  for _, e in ipairs(entries) do
    placed[string.match(e[2][2], '^(%d+)')] = true
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n, last = 0, 0
for i = 3, #ARGV, 2 do
  if not placed[ARGV[i]] then
    n, last = n + 1, i
    redis.call('BITFIELD', KEYS[1], 'SET', 'u4', '#' .. ARGV[i], ARGV[i + 1])
    local entry = ARGV[i] .. ' ' .. ARGV[i + 1] .. ' ' .. ARGV[2] .. ' ' .. now
    redis.call('XADD', KEYS[3], (head + n) .. '-0', 'd', entry)
  end
end
if n == 0 then return {epoch, now, head + 1, 0} end
redis.call('SET', KEYS[2], head + n)
return {epoch, now, head + 1, n, tonumber(ARGV[last]), tonumber(ARGV[last + 1])}
"""

# Put a policy version (and its public part) in force unless a newer one is.
# KEYS: policy, policy public; ARGV: version, public JSON. Returns the version in force.
POLICY_LUA = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local version = tonumber(ARGV[1])
if version > current then
  redis.call('SET', KEYS[1], version)
  redis.call('SET', KEYS[2], ARGV[2])
  return version
end
return current
"""

# Count a new session against the per-address caps, in fixed windows.
# KEYS: the minute's counter, the day's; ARGV: per minute, per day.
# Returns 0 (admitted), 1 (over the minute's cap) or 2 (over the day's).
SESSION_LUA = """
local day = tonumber(redis.call('GET', KEYS[2]) or '0')
if day >= tonumber(ARGV[2]) then return 2 end
local minute = tonumber(redis.call('GET', KEYS[1]) or '0')
if minute >= tonumber(ARGV[1]) then return 1 end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 120)
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], 172800)
return 0
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
