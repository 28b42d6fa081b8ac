"""The pure rules of moderation: what a policy refuses, and what a rollback changes
(against a replay of a log without the undone placements, for any log)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from openplace.core.policy import Area, Ban, Policy, Rect
from openplace.core.rollback import PixelFacts, undo_changes, undone


def code(policy: Policy, user: str, address: str, x: int, y: int, now: float) -> str | None:
    refusal = policy.refusal(user, address, x, y, now)
    return None if refusal is None else refusal.code


def test_the_frozen_canvas_then_bans_then_protected_areas_refuse() -> None:
    policy = Policy(
        version=3,
        areas=(Area(1, Rect(10, 10, 5, 5)),),
        bans=(
            Ban("user", "vandal", "griefing", "mia", 0.0, 100.0),
            Ban("network", "203.0.113.0/24", "bots", "mia", 0.0),
        ),
    )
    assert code(policy, "vandal", "198.51.100.1", 0, 0, 50.0) == "banned"
    assert policy.refusal("vandal", "198.51.100.1", 0, 0, 100.0) is None  # expired
    assert code(policy, "u", "203.0.113.77", 0, 0, 0.0) == "banned"
    assert policy.refusal("u", "::ffff:203.0.113.77", 0, 0, 0.0) is not None
    assert policy.refusal("u", "203.0.114.1", 0, 0, 0.0) is None
    assert code(policy, "u", "198.51.100.1", 14, 14, 0.0) == "protected"
    assert policy.refusal("u", "198.51.100.1", 15, 14, 0.0) is None
    frozen = Policy(version=4, frozen=True)
    assert code(frozen, "u", "198.51.100.1", 0, 0, 0.0) == "frozen"
    assert frozen.public() == {"frozen": True, "protected": []}


def test_an_ipv6_network_ban_holds_for_every_address_in_it() -> None:
    policy = Policy(version=1, bans=(Ban("network", "2001:db8:1::/48", "bots", "mia", 0.0),))
    assert policy.address_ban("2001:db8:1:ffff::9", 0.0) is not None
    assert policy.address_ban("2001:db8:2::9", 0.0) is None
    assert policy.address_ban("not an address", 0.0) is None


Log = list[tuple[str, int, int]]  # (user, pixel, colour), seq = position + 1

logs = st.lists(
    st.tuples(st.sampled_from(["v", "w", "a", "b"]), st.integers(0, 5), st.integers(0, 15)),
    max_size=60,
)


def facts_from(log: Log, users: set[str], after: int) -> list[PixelFacts]:
    """What an archive reads, computed the slow way."""
    facts = []
    for pixel in {p for s, (u, p, _) in enumerate(log, 1) if undone(u, s, users, after)}:
        on = [(s, u, c) for s, (u, p, c) in enumerate(log, 1) if p == pixel]
        newest = on[-1]
        kept = [c for s, u, c in on if not undone(u, s, users, after)]
        facts.append(PixelFacts(pixel, newest[0], newest[2], newest[1], kept[-1] if kept else None))
    return facts


@given(logs, st.sets(st.sampled_from(["v", "w"]), min_size=1), st.integers(0, 60))
def test_a_rollback_makes_the_board_a_replay_without_the_undone(
    log: Log, users: set[str], after: int
) -> None:
    board = [0] * 6
    for _, pixel, color in log:
        board[pixel] = color
    for pixel, color in undo_changes(facts_from(log, users, after), users, after):
        assert board[pixel] != color  # only pixels that change
        board[pixel] = color
    replay = [0] * 6
    for seq, (user, pixel, color) in enumerate(log, 1):
        if not undone(user, seq, users, after):
            replay[pixel] = color
    assert board == replay
