"""The 16-colour palette of r/place 2017; a pixel stores its index (4 bits)."""

from __future__ import annotations

PALETTE: tuple[str, ...] = (
    "#FFFFFF",
    "#E4E4E4",
    "#888888",
    "#222222",
    "#FFA7D1",
    "#E50000",
    "#E59500",
    "#A06A42",
    "#E5D900",
    "#94E044",
    "#02BE01",
    "#00D3DD",
    "#0083C7",
    "#0000EA",
    "#CF6EE4",
    "#820080",
)

assert len(PALETTE) == 16
