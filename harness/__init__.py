"""What the tests and the benchmarks both use to start servers: throw-away Redis and
PostgreSQL servers on free ports (:mod:`.servers`). Owned by neither."""
