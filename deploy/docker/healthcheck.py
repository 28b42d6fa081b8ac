"""The image's HEALTHCHECK: is the role in this container alive?

GET /livez on OPENPLACE_PORT (api, realtime, serve), else on the persister's metrics port
(OPENPLACE_PERSISTER_METRICS_PORT, default 9464). Exit 0 if either answers 200.
Standard library only: it runs with the image's Python and nothing else.
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


def alive(port: str, path: str = "/livez", timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return int(r.status) == 200
    except OSError:
        return False


def main() -> int:
    return 0 if any(alive(p) for p in ports(dict(os.environ))) else 1


if __name__ == "__main__":
    sys.exit(main())
