"""Distributed storage: the board and sequence in Redis, durability in PostgreSQL.

- :mod:`.keys` - Redis key names and the placement Lua script.
- :mod:`.schema` - PostgreSQL schema migrations and queries.
- :mod:`.store` - :class:`DistributedStore`, the API processes' store.
- :mod:`.feed` - :class:`RedisFeed`, what the realtime processes read.
- :mod:`.persister` - the background role that makes placements durable and restores Redis.
"""
