"""The persona vocabulary both sides agree on: styles, genders and their aliases."""

from __future__ import annotations

from typing import Final, Literal

__all__ = [
    "GENDER_ALIASES",
    "PERSONA_STYLES",
    "USER_IDENTITIES",
    "Gender",
    "normalize_gender",
]

Gender = Literal["woman", "man"]

PERSONA_STYLES: Final = frozenset(
    {"flirty", "religious", "savage", "delulu", "spiritual", "nerdy", "wholesome"}
)
USER_IDENTITIES: Final = frozenset({"woman", "man", "non-binary"})
GENDER_ALIASES: Final[dict[str, Gender]] = {
    "woman": "woman",
    "female": "woman",
    "f": "woman",
    "w": "woman",
    "man": "man",
    "male": "man",
    "m": "man",
}


def normalize_gender(value: str) -> Gender | None:
    """Map the accepted spellings to ``woman``/``man``; None if unknown."""
    return GENDER_ALIASES.get(value.strip().lower())
