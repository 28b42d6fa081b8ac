"""Templates (a picture to keep on the board) and the bot that keeps one there by the
rules: ``openplace template diff`` and ``openplace draw``. See ``docs/client.md``."""

from openplace.templates.model import (
    DAMAGE_RADIUS,
    Area,
    Diff,
    Fix,
    Template,
    TemplateError,
    damage,
    diff,
    from_rgba,
    load,
    priorities,
)

__all__ = [
    "DAMAGE_RADIUS",
    "Area",
    "Diff",
    "Fix",
    "Template",
    "TemplateError",
    "damage",
    "diff",
    "from_rgba",
    "load",
    "priorities",
]
