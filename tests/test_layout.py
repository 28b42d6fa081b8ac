"""The tree keeps the two modes apart (issue 8)."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path


def test_embedded_mode_loads_neither_redis_nor_asyncpg(tmp_path: Path) -> None:
    code = (
        "import sys, pathlib\n"
        "from openplace.app import create_app\n"
        "from openplace.config import Settings\n"
        f"create_app(Settings(data_dir=pathlib.Path({str(tmp_path)!r}), secret='x'))\n"
        "print(sorted(m for m in ('redis', 'asyncpg') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_nginx_template_ships_with_the_package() -> None:
    from openplace.distributed.cluster import TEMPLATE

    shipped = resources.files("openplace.distributed").joinpath("nginx.conf.template")
    assert shipped.is_file() and Path(str(shipped)) == TEMPLATE
    assert "${LISTEN}" in TEMPLATE.read_text()
