"""Constructing the service: everything checked up front, every setting filled."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest

pytest.importorskip("pipecat")

from pipecat.utils.types import is_given

from integrations.pipecat import YapLLMService, YapLLMSettings

GOOD: dict[str, Any] = {
    "url": "ws://127.0.0.1:8000/ws",
    "api_key": "k",
    "session_id": "user-42",
    "assistant_gender": "female",
}


def test_every_setting_is_given() -> None:
    """Pipecat logs an error for a NOT_GIVEN field; the store has none."""
    llm = YapLLMService(**GOOD, persona_style="nerdy", user_identity="non-binary")
    settings = llm.settings
    assert isinstance(settings, YapLLMSettings)
    missing = [f.name for f in fields(settings) if not is_given(getattr(settings, f.name))]
    assert missing == []
    assert (settings.persona_style, settings.user_identity) == ("nerdy", "non-binary")


def test_settings_delta_overrides_arguments() -> None:
    llm = YapLLMService(**GOOD, settings=YapLLMSettings(persona_text="You are terse."))
    assert llm.settings.persona_text == "You are terse."  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "override",
    [
        {"url": "http://127.0.0.1:8000/ws"},
        {"session_id": "a.*"},
        {"session_id": ""},
        {"session_id": "x" * 129},
        {"assistant_gender": "robot"},
        {"persona_style": "grumpy"},
        {"user_identity": "cat"},
        {"max_history_chars": -1},
    ],
)
def test_bad_arguments_fail_at_construction(override: dict[str, Any]) -> None:
    """The edge would refuse these on the first turn; the service refuses them first."""
    with pytest.raises(ValueError):
        YapLLMService(**{**GOOD, **override})
