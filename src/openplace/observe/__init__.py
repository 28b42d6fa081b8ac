"""Observability: Prometheus metrics (:mod:`.metrics`), liveness and readiness
(:mod:`.health`), and the persister's own small HTTP server (:mod:`.server`).

Nothing here imports a backend: the stores, the hub and the persister report into
these modules, and each process serves what its roles report.
"""
