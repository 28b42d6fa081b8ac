"""A Jepsen-style fault checker for the distributed mode.

A load of users places pixels through nginx, each placement on a pixel never used
before, while websocket clients (openplace.client's LiveBoard) follow the board and a
nemesis injects faults at seeded random times: SIGKILL of Redis (restarted empty), of
the active persister (a standby takes over), of an API and of a realtime process
(restarted), ``pg_ctl stop -m immediate`` of PostgreSQL (then started), and
SIGSTOP/SIGCONT of Redis and of PostgreSQL. Every operation is recorded
(:mod:`.history`). After the faults are healed and the stack has settled,
:mod:`.checker` compares the history with what PostgreSQL holds, with the served board
and with every client's board.

``python -m tests.faults --minutes 10 --seed 1`` runs a soak and prints the figures;
``tests/test_faults.py`` runs a short seeded version of it.
"""

from tests.faults.checker import Report, check
from tests.faults.run import Config, run

__all__ = ["Config", "Report", "check", "run"]
