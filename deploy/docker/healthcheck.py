"""The image's HEALTHCHECK: is the role in this container ready?

GET /readyz on OPENPLACE_PORT (api, realtime, serve), else on the persister's metrics
port (OPENPLACE_PERSISTER_METRICS_PORT, default 9464). Exit 0 if either answers 200.
Ready, not only live: compose's `depends_on: condition: service_healthy` then starts
nginx once the tiers can serve (Docker restarts nothing for being unhealthy; Kubernetes
ignores HEALTHCHECK and uses the manifests' probes). Standard library only.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def ports(env: dict[str, str]) -> list[str]:
    return [
        env.get("OPENPLACE_PORT") or "8000",
        env.get("OPENPLACE_PERSISTER_METRICS_PORT") or "9464",
    ]


def ready(port: str, path: str = "/readyz", timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return int(r.status) == 200
    except OSError:
        return False


def main() -> int:
    return 0 if any(ready(p) for p in ports(dict(os.environ))) else 1


if __name__ == "__main__":
    sys.exit(main())
