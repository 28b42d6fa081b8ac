"""The page's files, with how long a browser may keep them: the same as the bundled
nginx serves them from disk (``expires 5m``), and the page itself revalidated each
time (so a new version's page arrives at once, and its files within five minutes)."""

from __future__ import annotations

import os

from starlette.responses import Response
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Scope

FILE_CACHE = "public, max-age=300"
PAGE_CACHE = "no-cache"


class PageFiles(StaticFiles):
    """:class:`StaticFiles` with ``Cache-Control``: :data:`PAGE_CACHE` for
    ``index.html``, :data:`FILE_CACHE` for the rest."""

    def file_response(
        self,
        full_path: PathLike,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        page = os.path.basename(full_path) == "index.html"
        response.headers["Cache-Control"] = PAGE_CACHE if page else FILE_CACHE
        return response
