"""The operators' template images at ``/templates/<name>`` (``OPENPLACE_TEMPLATES_DIR``),
against a real server: images only, read-only, nothing outside the folder, a missing
folder is 404s and not a failed start. (nginx in front: tests/test_security.py.)"""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import httpx
import pytest
from PIL import Image

from openplace.config import Settings
from openplace.web.files import TEMPLATE_CACHE
from openplace.web.security import HEADERS
from tests.conftest import LiveServer, ServerFactory


def png(color: tuple[int, int, int, int] = (255, 0, 0, 255)) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (3, 2), color).save(out, "PNG")
    return out.getvalue()


async def raw_get(server: LiveServer, target: str) -> tuple[int, bytes]:
    """``GET target`` exactly as written (an HTTP client would resolve ``..`` first)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(15):
            data = await reader.read(-1)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def assert_page_headers(r: httpx.Response) -> None:
    for name, value in HEADERS.items():
        assert r.headers.get_list(name) == [value], f"{r.url}: {name}"


@pytest.fixture
def templates(settings: Settings) -> Path:
    folder = settings.templates_path
    folder.mkdir(parents=True)
    return folder


def test_the_folder_is_data_dir_templates_unless_set(tmp_path: Path) -> None:
    s = Settings.from_env({"OPENPLACE_DATA_DIR": str(tmp_path)})
    assert s.templates_dir is None and s.templates_path == tmp_path / "templates"
    assert s.with_(data_dir=tmp_path / "b").templates_path == tmp_path / "b" / "templates"
    s = Settings.from_env({"OPENPLACE_DATA_DIR": str(tmp_path),
                           "OPENPLACE_TEMPLATES_DIR": str(tmp_path / "t")})  # fmt: skip
    assert s.templates_path == tmp_path / "t"


async def test_an_image_is_served_with_its_type_a_short_cache_and_the_page_headers(
    templates: Path, client: httpx.AsyncClient
) -> None:
    body = png()
    (templates / "castle.png").write_bytes(body)
    types = {"a.gif": "image/gif", "b.webp": "image/webp", "c.jpg": "image/jpeg",
             "d.jpeg": "image/jpeg", "E.PNG": "image/png"}  # fmt: skip
    for name in types:
        (templates / name).write_bytes(b"not checked: served as it is")
    r = await client.get("/templates/castle.png")
    assert r.status_code == 200 and r.content == body
    assert r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == TEMPLATE_CACHE == "public, max-age=60"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert_page_headers(r)
    for name, media_type in types.items():
        r = await client.get(f"/templates/{name}")
        assert (r.status_code, r.headers["content-type"]) == (200, media_type), name
    # HEAD, and revalidation by ETag
    head = await client.head("/templates/castle.png")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(body))
    etag = (await client.get("/templates/castle.png")).headers["etag"]
    again = await client.get("/templates/castle.png", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    # read-only
    for method in ("POST", "PUT", "DELETE"):
        r = await client.request(method, "/templates/castle.png", content=b"x")
        assert r.status_code == 405, method
    assert (templates / "castle.png").read_bytes() == body
    # an edit is served at once by the app (browsers keep the old one up to a minute)
    (templates / "castle.png").write_bytes(new := png((0, 0, 255, 255)))
    assert (await client.get("/templates/castle.png")).content == new


async def test_only_image_files_no_listing(templates: Path, client: httpx.AsyncClient) -> None:
    (templates / "castle.png").write_bytes(png())
    for name in ("notes.txt", "page.html", "logo.svg", "script.js", "png", ".png", "x.png.txt"):
        (templates / name).write_text("<script>alert(1)</script>")
    (templates / "folder.png").mkdir()
    (templates / "folder.png" / "inner.png").write_bytes(png())
    (templates / "sub").mkdir()
    (templates / "sub" / "nested.png").write_bytes(png())
    (templates / "sub" / "nested.txt").write_text("text")
    for path in ("notes.txt", "page.html", "logo.svg", "script.js", "png", ".png",
                 "x.png.txt", "folder.png", "folder.png/", "missing.png", "", "sub", "sub/",
                 "sub/nested.txt"):  # fmt: skip
        r = await client.get(f"/templates/{path}")
        assert r.status_code == 404, path
        assert r.headers["content-type"] == "application/json", path
        assert_page_headers(r)
    assert (await client.get("/templates")).status_code == 404
    # a subfolder's image is an image of the folder
    assert (await client.get("/templates/sub/nested.png")).status_code == 200
    assert (await client.get("/templates/folder.png/inner.png")).status_code == 200


async def test_nothing_outside_the_folder(
    templates: Path, settings: Settings, server: LiveServer
) -> None:
    outside = templates.parent / "outside.png"
    outside.write_bytes(secret := png((1, 2, 3, 255)))
    (templates.parent / "secret.png").write_bytes(secret)
    (templates / "inside.png").write_bytes(png())
    (templates / "notes.txt").write_text("not an image")
    os.symlink(outside, templates / "link-out.png")  # a link out of the folder
    os.symlink(templates / "notes.txt", templates / "link-to-text.png")  # to a non-image
    os.symlink(templates / "inside.png", templates / "link-in.png")  # inside, an image: fine
    assert (await raw_get(server, "/templates/inside.png"))[0] == 200
    assert (await raw_get(server, "/templates/link-in.png"))[0] == 200
    for target in ("/templates/../outside.png", "/templates/%2e%2e/outside.png",
                   "/templates/..%2foutside.png", "/templates/%2E%2E%2Fsecret.png",
                   "/templates/sub/../../outside.png", "/templates/./../secret.png",
                   "/templates//" + str(outside).lstrip("/"), "/templates/%2f" + str(outside),
                   "/templates/..%5csecret.png", "/templates/link-out.png",
                   "/templates/link-to-text.png", "/templates/%00.png"):  # fmt: skip
        status, body = await raw_get(server, target)
        assert status == 404, target
        assert secret not in body and b"not an image" not in body, target


async def test_a_missing_folder_serves_404_until_it_is_made(
    server_factory: ServerFactory, settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "not-yet"
    server = await server_factory(settings.with_(templates_dir=folder))
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        assert (await client.get("/")).status_code == 200  # the page is served
        for path in ("/templates/castle.png", "/templates/", "/templates/notes.txt"):
            r = await client.get(path)
            assert r.status_code == 404, path
            assert_page_headers(r)
        folder.mkdir()
        (folder / "castle.png").write_bytes(body := png())
        r = await client.get("/templates/castle.png")
        assert r.status_code == 200 and r.content == body
