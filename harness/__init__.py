"""What the tests and the benchmarks both use to start servers: throw-away Redis and
PostgreSQL servers on free ports (:mod:`.servers`), and the browser and its flags
(:mod:`.browser`). Owned by neither."""
