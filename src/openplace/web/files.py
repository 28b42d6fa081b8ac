"""The page's files, with how long a browser may keep them: the same as the bundled
nginx serves them from disk (``expires 5m``), and the page itself revalidated each
time (so a new version's page arrives at once, and its files within five minutes).

Also the operators' template images (``OPENPLACE_TEMPLATES_DIR``), served read-only at
``/templates/<name>`` for the page's template overlay: images only, kept a minute."""

from __future__ import annotations

import os

from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, Response
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Scope

FILE_CACHE = "public, max-age=300"
PAGE_CACHE = "no-cache"
# A community's edit of its template shows within a minute.
TEMPLATE_CACHE = "public, max-age=60"
# What /templates/ serves, by the name's extension (any case), with this type; no SVG
# (a document that can carry script).
TEMPLATE_TYPES: dict[str, str] = {
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
}


def template_type(name: str) -> str | None:
    """The content type of a template file named ``name``, or None if it is not served."""
    return TEMPLATE_TYPES.get(os.path.splitext(name)[1].lower())


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


class TemplateFiles(StaticFiles):
    """The template images of one folder, read-only: a file whose name (and, through a
    symbolic link, whose target's name) ends in one of :data:`TEMPLATE_TYPES` is served
    with that type and ``Cache-Control`` :data:`TEMPLATE_CACHE`; any other name, a
    folder (no listing) and a name outside the folder (``..``, links out) are 404.
    The folder may be missing: then every name is 404, until it is made."""

    def __init__(self, directory: PathLike) -> None:
        super().__init__(directory=directory, html=False, check_dir=False)

    async def check_config(self) -> None:
        """No check: :class:`StaticFiles` would fail each request (500) on a missing folder."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if template_type(path) is None:
            raise HTTPException(status_code=404)
        return await super().get_response(path, scope)

    def file_response(
        self,
        full_path: PathLike,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        media_type = template_type(os.fspath(full_path))
        if media_type is None:  # a link to a file that is not an image
            raise HTTPException(status_code=404)
        response = super().file_response(full_path, stat_result, scope, status_code)
        if isinstance(response, FileResponse):  # else a 304, which has no type
            response.headers["Content-Type"] = media_type
        response.headers["Cache-Control"] = TEMPLATE_CACHE
        return response
