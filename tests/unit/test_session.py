"""A connection's session view and the persona rules, without I/O."""

from __future__ import annotations

import msgspec
import pytest

from bus.events import Warm
from edge.errors import ProtocolError
from edge.messages import SetPersonaMessage, StartMessage, WarmHistoryMessage, WarmPersonaMessage
from edge.session import SessionView, apply_persona, start_ack, start_settings, warm_event
from edge.sessions import SessionSettings

BASE = SessionSettings(assistant_gender="woman", seed=7, now="01/01/2026 Thursday")


def test_view_caches_only_its_own_session() -> None:
    """cached() answers for the session the connection is on, nothing else."""
    view = SessionView()
    assert view.cached("s1") is None
    view.adopt("s1", BASE)
    assert view.cached("s1") is BASE and view.cached("s2") is None


def test_update_keeps_another_sessions_settings_out() -> None:
    """set_persona for another session does not replace this session's copy."""
    view = SessionView()
    view.adopt("s1", BASE)
    other = msgspec.structs.replace(BASE, persona_style="nerdy")
    view.update("s2", other)
    assert view.settings is BASE
    view.update("s1", other)
    assert view.settings is other


def test_with_home_only_when_it_changes() -> None:
    """The home chat actor is stored once, not again for the same actor or another session."""
    view = SessionView()
    view.adopt("s1", BASE)
    updated = view.with_home("s1", "chat-3")
    assert updated is not None and updated.chat_actor == "chat-3" and view.settings is updated
    assert view.with_home("s1", "chat-3") is None
    assert view.with_home("s2", "chat-4") is None
    assert view.with_home("s1", "") is None


def test_apply_persona_reports_what_changed() -> None:
    """Changed fields are reported, the override as persona_text_override; equal ones are not."""
    message = SetPersonaMessage(
        assistant_gender="m", persona_style=" savage ", user_identity="woman", persona_text="Rex"
    )
    settings, changed = apply_persona(BASE, message)
    assert (settings.assistant_gender, settings.persona_style, settings.persona_text) == (
        "man",
        "savage",
        "Rex",
    )
    assert changed == {
        "assistant_gender": "man",
        "persona_style": "savage",
        "user_identity": "woman",
        "persona_text_override": True,
    }
    assert apply_persona(settings, message) == (settings, {})
    cleared, changed = apply_persona(settings, SetPersonaMessage(persona_text=None))
    assert cleared.persona_text is None and changed == {"persona_text_override": False}


def test_first_start_needs_a_gender() -> None:
    """A session's first start without assistant_gender is missing_field; later ones inherit it."""
    fresh = SessionSettings(seed=1)
    with pytest.raises(ProtocolError) as error:
        start_settings(fresh, StartMessage(session_id="s", user_utterance="hi"))
    assert error.value.code == "missing_field"
    assert start_settings(BASE, StartMessage(session_id="s", user_utterance="hi")) == (BASE, False)
    settings, changed = start_settings(
        BASE, StartMessage(session_id="s", user_utterance="hi", persona_style="nerdy")
    )
    assert changed and settings.persona_style == "nerdy"


def test_start_ack_carries_the_settings() -> None:
    """The ack names the session, its seed and clock, the persona and the turn."""
    ack = start_ack(BASE, session_id="s", turn_id="t", chat_model="c", tool_model=None)
    assert ack["seed"] == 7 and ack["now"] == BASE.now and ack["turn_id"] == "t"
    assert ack["models"] == {"chat": "c", "tool": None}
    assert ack["persona_text_override"] is False


def test_warm_events_name_the_edge_and_segment() -> None:
    """warm_persona applies its persona fields to the warm only; warm_history carries the text."""
    persona = warm_event(
        WarmPersonaMessage(persona_text="You are Ada."),
        BASE,
        session_id="s",
        warm_id="w1",
        edge_id="edge-0",
    )
    assert isinstance(persona, Warm) and persona.segment == "persona"
    assert persona.persona.persona_text == "You are Ada." and persona.edge_id == "edge-0"
    history = warm_event(
        WarmHistoryMessage(history_text="User: hi"),
        BASE,
        session_id="s",
        warm_id="w2",
        edge_id="edge-0",
    )
    assert (history.segment, history.history_text, history.turn_id) == ("history", "User: hi", "w2")
