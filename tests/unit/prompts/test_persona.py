"""The composed chat persona: style, gender, identity and time, most shared part first."""

from __future__ import annotations

import pytest

from actors.prompts.persona import DEFAULT_STYLE, STYLE_TEXTS, compose_persona
from bus.events import Persona
from bus.persona import PERSONA_STYLES

GENDERS = ["woman", "man"]
IDENTITIES = ["woman", "man", "non-binary"]


def test_persona_text_overrides_the_settings():
    """A session's own persona_text is used verbatim."""
    persona = Persona(persona_style="savage", persona_text="You are Captain Nemo.")
    assert compose_persona(persona) == "You are Captain Nemo."


def test_blank_persona_text_is_ignored():
    """A persona_text of only whitespace falls back to the composed persona."""
    assert compose_persona(Persona(persona_text="  \n")) == compose_persona(Persona())


def test_every_known_style_has_its_own_text():
    """The styles are exactly the bus vocabulary, and each composes to a different text."""
    assert set(STYLE_TEXTS) == set(PERSONA_STYLES)
    texts = {compose_persona(Persona(persona_style=style)) for style in PERSONA_STYLES}
    assert len(texts) == len(PERSONA_STYLES)


@pytest.mark.parametrize("style", sorted(PERSONA_STYLES))
def test_composed_text_is_plain_speakable_ascii(style):
    """Composed personas contain no markdown marks, emojis or other non-ASCII characters."""
    text = compose_persona(Persona(persona_style=style, now="Friday 9:30 PM"))
    assert text.isascii()
    assert not any(mark in text for mark in ("*", "#", "`", "_", "|"))


def test_composition_is_deterministic():
    """The same settings always give the same text."""
    first = Persona(persona_style="nerdy", assistant_gender="man", now="Mon 8 AM")
    second = Persona(persona_style="nerdy", assistant_gender="man", now="Mon 8 AM")
    assert compose_persona(first) == compose_persona(second)


@pytest.mark.parametrize("gender", GENDERS)
@pytest.mark.parametrize("identity", IDENTITIES)
def test_gender_and_identity_are_stated(gender, identity):
    """The assistant's gender and the user's identity each appear in the text."""
    text = compose_persona(Persona(assistant_gender=gender, user_identity=identity))
    assert f"You are a {gender}." in text
    assert ("non-binary" in text) == (identity == "non-binary")
    if identity != "non-binary":
        assert f"talking with is a {identity}." in text


def test_time_comes_last_and_is_optional():
    """`now` is the last sentence when set and absent when empty."""
    with_time = compose_persona(Persona(now="Tuesday, 5:04 PM"))
    assert with_time.endswith("Tuesday, 5:04 PM.")
    assert "current date and time" not in compose_persona(Persona(now=""))


def test_per_session_bits_come_after_the_shared_part():
    """Sessions with the same style and gender share the text up to identity and time."""
    a = compose_persona(Persona(persona_style="flirty", user_identity="man", now="9 AM"))
    b = compose_persona(Persona(persona_style="flirty", user_identity="woman", now="10 PM"))
    shared = compose_persona(Persona(persona_style="flirty")).split("The person you")[0]
    assert a.startswith(shared) and b.startswith(shared)
    assert "You are a woman." in shared and STYLE_TEXTS["flirty"] in shared


def test_gender_comes_after_style():
    """Two genders of one style share everything up to the gender sentence."""
    woman = compose_persona(Persona(persona_style="savage", assistant_gender="woman"))
    man = compose_persona(Persona(persona_style="savage", assistant_gender="man"))
    common = woman.split("You are a woman.")[0]
    assert man.startswith(common) and STYLE_TEXTS["savage"] in common


def test_unknown_style_falls_back_to_the_default():
    """A style outside the vocabulary composes like the default style."""
    fallback = compose_persona(Persona(persona_style="pirate"))
    assert fallback == compose_persona(Persona(persona_style=DEFAULT_STYLE))


def test_style_name_is_case_insensitive():
    """'Savage' and 'savage' compose the same text."""
    upper = compose_persona(Persona(persona_style="Savage"))
    assert upper == compose_persona(Persona(persona_style="savage"))
