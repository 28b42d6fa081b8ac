# Sourced by scripts/serve and scripts/test: make .venv and install pinned packages.
# Usage: ensure_venv "<extras>"   (e.g. "" or "test")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${OPENPLACE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

ensure_venv() {
    local extras="$1" spec="$ROOT" stamp
    [ -n "$extras" ] && spec="$ROOT[$extras]"
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating $VENV" >&2
        "$PYTHON" -m venv "$VENV"
    fi
    # Reinstall only when the pins or the project metadata change.
    stamp="$VENV/.openplace-installed-${extras:-base}"
    local want
    want="$(cat "$ROOT/requirements/constraints.txt" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "==> installing openplace${extras:+[$extras]} (pinned by requirements/constraints.txt)" >&2
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
            -c "$ROOT/requirements/constraints.txt" -e "$spec" >&2
        echo "$want" > "$stamp"
    fi
}
