"""Moderator identity (issue 10, point 1) and the audit log (point 6, so far): a token
from ``openplace admin token`` opens ``/api/admin/``; everyone else gets 401/403 JSON;
``openplace admin revoke`` holds at once in every process; every action is audited."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from openplace.auth.moderators import Moderator, ModeratorSigner
from openplace.auth.tokens import InvalidToken, TokenSigner
from openplace.config import Settings
from openplace.distributed.cluster import Cluster
from tests.conftest import LiveServer, auth, mint_token


def admin(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "openplace.cli", "admin", *args],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def embedded_env(settings: Settings) -> dict[str, str]:
    return {"OPENPLACE_DATA_DIR": str(settings.data_dir), "OPENPLACE_SECRET": "test-secret"}


async def test_only_a_moderator_token_opens_the_admin_api(
    server: LiveServer, client: httpx.AsyncClient, settings: Settings
) -> None:
    env = embedded_env(settings)
    token = admin(env, "token", "--name", "alice", "--expires", "1h").stdout.strip()
    me = await client.get("/api/admin/me", headers=auth(token))
    assert me.status_code == 200, me.text
    assert me.json()["name"] == "alice" and me.json()["expires_at"].endswith("Z")
    assert me.headers["cache-control"] == "no-store"

    for headers, status in [({}, 401), (auth("not-a-token"), 401), (auth(token + "x"), 401),
                            (auth(mint_token()), 403)]:  # fmt: skip
        for path in ("/api/admin/me", "/api/admin/audit"):
            r = await client.get(path, headers=headers)
            assert r.status_code == status, (path, headers, r.text)
            assert r.json()["error"] == ("unauthorized" if status == 401 else "forbidden")
    # a moderator token is no user token: it cannot place
    placed = await client.post("/api/pixel", json={"x": 1, "y": 1, "color": 1},
                               headers=auth(token))  # fmt: skip
    assert placed.status_code == 401

    admin(env, "revoke", "alice")
    r = await client.get("/api/admin/me", headers=auth(token))
    assert r.status_code == 401 and "revoked" in r.json()["message"]
    again = admin(env, "token", "--name", "alice").stdout.strip()  # a new one works
    assert (await client.get("/api/admin/me", headers=auth(again))).status_code == 200

    log = (await client.get("/api/admin/audit", headers=auth(again))).json()
    assert [(e["actor"], e["action"], e["args"]["name"]) for e in log["entries"]] == [
        ("cli", "token", "alice"), ("cli", "revoke", "alice"), ("cli", "token", "alice")
    ]
    page = (await client.get("/api/admin/audit", params={"limit": 2},
                             headers=auth(again))).json()  # fmt: skip
    assert len(page["entries"]) == 2 and page["next_before"] == page["entries"][-1]["id"]
    rest = (await client.get("/api/admin/audit", headers=auth(again),
                             params={"before": page["next_before"]})).json()  # fmt: skip
    assert [e["action"] for e in rest["entries"]] == ["token"] and rest["next_before"] is None
    lines = admin(env, "audit").stdout.strip().splitlines()
    assert len(lines) == 3 and "\trevoke\t" in lines[1]


def test_moderator_tokens_are_signed_expire_and_are_not_user_tokens() -> None:
    signer = ModeratorSigner("test-secret")
    now = time.time()
    token = signer.issue(Moderator("bob", now, now + 60))
    assert signer.verify(token, now).name == "bob"
    with pytest.raises(InvalidToken, match="expired"):
        signer.verify(token, now + 61)
    with pytest.raises(InvalidToken):
        ModeratorSigner("other-secret").verify(token, now)
    with pytest.raises(InvalidToken):
        TokenSigner("test-secret").verify(token)  # another salt: not a user's token
    with pytest.raises(InvalidToken):
        signer.verify(TokenSigner("test-secret").issue(TokenSigner("x").new_identity()), now)
    with pytest.raises(ValueError):
        signer.issue(Moderator("no spaces", now, None))


async def test_a_revocation_holds_in_every_api_process(cluster: Cluster) -> None:
    env = {"OPENPLACE_REDIS_URL": cluster.settings.redis_url or "",
           "OPENPLACE_DATABASE_URL": cluster.settings.database_url or "",
           "OPENPLACE_SECRET": "test-secret"}  # fmt: skip
    token = admin(env, "token", "--name", "carol").stdout.strip()
    async with httpx.AsyncClient(base_url=cluster.url, timeout=10) as client:
        # nginx spreads these over both API processes
        answers = [await client.get("/api/admin/me", headers=auth(token)) for _ in range(6)]
        assert {r.status_code for r in answers} == {200}
        admin(env, "revoke", "carol")
        answers = [await client.get("/api/admin/me", headers=auth(token)) for _ in range(6)]
        assert {r.status_code for r in answers} == {401}
        fresh = admin(env, "token", "--name", "dave").stdout.strip()
        log = (await client.get("/api/admin/audit", headers=auth(fresh))).json()["entries"]
        assert [(e["action"], e["args"]["name"]) for e in log] == [
            ("token", "dave"), ("revoke", "carol"), ("token", "carol")
        ]
