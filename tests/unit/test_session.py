"""A connection's session view and the persona rules, without I/O."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from bus.events import Warm
from bus.history import append_turn
from edge.errors import ProtocolError
from edge.messages import SetPersonaMessage, StartMessage, WarmHistoryMessage, WarmPersonaMessage
from edge.session import (
    SessionView,
    apply_persona,
    leg_message,
    next_history,
    start_ack,
    start_settings,
    turn_reply,
    turn_settings,
    warm_event,
)
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


# --- server-kept history ----------------------------------------------------------------

CAP = 10_000
SEEDED = msgspec.structs.replace(BASE, history="User: hi\nAssistant: hello.")


def server_start(utterance: str = "what now?", **fields: object) -> StartMessage:
    return StartMessage(session_id="s", user_utterance=utterance, server_history=True, **fields)  # type: ignore[arg-type]


def test_old_client_start_leaves_the_stored_history_alone() -> None:
    """Without server_history the turn runs on the message's history_text, as it came, and
    the stored history is neither used nor replaced."""
    message = StartMessage(session_id="s", user_utterance="hi", history_text="User: mine")
    assert turn_settings(SEEDED, message, SEEDED, max_chars=CAP) == (SEEDED, False)
    assert leg_message(message, SEEDED) is message


def test_server_history_start_runs_on_the_stored_history() -> None:
    """With server_history and no history_text, the legs get the stored history."""
    message = server_start()
    settings, seeded = turn_settings(SEEDED, message, SEEDED, max_chars=CAP)
    assert (settings, seeded) == (SEEDED, False)
    assert leg_message(message, settings).history_text == SEEDED.history
    assert leg_message(message, settings).user_utterance == "what now?"


@pytest.mark.parametrize("seed", ["User: from elsewhere\nAssistant: ok.", ""])
def test_history_text_sent_with_server_history_replaces_it(seed: str) -> None:
    """A history_text sent with server_history (even "", which clears) replaces the stored
    history; one that was not sent (history_sent false) does not."""
    message = server_start(history_text=seed, history_sent=True)
    settings, seeded = turn_settings(SEEDED, message, SEEDED, max_chars=CAP)
    assert seeded and settings.history == seed
    assert leg_message(message, settings).history_text == seed
    unsent = server_start(history_text="", history_sent=False)
    assert turn_settings(SEEDED, unsent, SEEDED, max_chars=CAP) == (SEEDED, False)


def test_a_seed_is_capped_like_every_stored_history() -> None:
    """A seed over the cap keeps its newest whole lines within the cap."""
    lines = [f"User: line {i}" for i in range(50)]
    message = server_start(history_text="\n".join(lines), history_sent=True)
    settings, _ = turn_settings(BASE, message, None, max_chars=100)
    assert 0 < len(settings.history) <= 100
    assert settings.history == "\n".join(lines[-len(settings.history.split("\n")) :])


def test_the_copy_after_a_barge_in_is_the_sessions_history() -> None:
    """Settings worked out before a barge-in take the history the stopped turn left in
    the connection's copy."""
    later = msgspec.structs.replace(SEEDED, history=SEEDED.history + "\nUser: wait")
    settings, seeded = turn_settings(SEEDED, server_start(), later, max_chars=CAP)
    assert settings.history == later.history and not seeded


@pytest.mark.parametrize(
    ("outcome", "reason", "sent", "expected"),
    [
        ("completed", "cancel", "Sure, here it is.", "Sure, here it is."),
        ("completed", "cancel", "", ""),  # a tool-only turn: the utterance alone
        ("cancelled", "cancel", "Sure, ", "Sure, "),
        ("cancelled", "barge_in", "Sure, here", "Sure, here"),
        ("cancelled", "end", "Sure", "Sure"),
        ("cancelled", "barge_in", "", None),
        ("cancelled", "barge_in", "  ", None),
        ("cancelled", "disconnect", "Sure, here", None),
        ("failed", "cancel", "Sure, here", None),
        ("failed", "cancel", "", None),
    ],
)
def test_turn_reply_rules(outcome: str, reason: str, sent: str, expected: str | None) -> None:
    """What a turn adds: completed, the reply; stopped by the client after text was sent,
    the part sent; before any text, failed or disconnected, nothing."""
    assert turn_reply(outcome, reason, sent) == expected  # type: ignore[arg-type]


def test_completed_turn_appends_what_the_chat_actor_predicts() -> None:
    """A completed turn's history is byte for byte what actors/chat.py warms for the next
    turn: append_turn(the history it was sent, the utterance, the streamed reply joined)."""
    view = SessionView()
    view.adopt("s", SEEDED)
    message = leg_message(server_start("  tell me\n more "), SEEDED)
    pieces = ["Once ", "upon  a\n", "time ", "there was a fox."]
    assert view.end_turn(
        message, outcome="completed", reason="cancel", sent="".join(pieces), max_chars=CAP
    )
    predicted = append_turn(message.history_text, message.user_utterance, "".join(pieces))
    assert view.settings is not None and view.settings.history == predicted
    assert predicted.endswith("\nUser: tell me more\nAssistant: Once upon a time there was a fox.")
    assert view.take_unsaved() == ("s", view.settings)
    assert view.take_unsaved() is None  # stored once


def test_end_turn_of_an_old_client_or_a_failure_changes_nothing() -> None:
    """Turns without server_history, and failed ones, leave the copy saved and unchanged."""
    view = SessionView()
    view.adopt("s", SEEDED)
    old = StartMessage(session_id="s", user_utterance="hi", history_text="User: mine")
    assert not view.end_turn(old, outcome="completed", reason="cancel", sent="Hey.", max_chars=CAP)
    failed = leg_message(server_start(), SEEDED)
    assert not view.end_turn(failed, outcome="failed", reason="cancel", sent="Hey", max_chars=CAP)
    assert view.settings is SEEDED and view.take_unsaved() is None


def test_cancelled_turn_keeps_the_utterance_and_what_was_sent() -> None:
    """A barged-in turn adds the utterance and the part of the reply sent, normalized."""
    view = SessionView()
    view.adopt("s", SEEDED)
    message = leg_message(server_start("tell me a story"), SEEDED)
    assert view.end_turn(
        message, outcome="cancelled", reason="barge_in", sent="Once upon ", max_chars=CAP
    )
    assert view.settings is not None
    assert view.settings.history == SEEDED.history + "\nUser: tell me a story\nAssistant: Once upon"


def test_history_over_the_cap_cuts_whole_lines_in_steps() -> None:
    """Past the cap the oldest whole lines go, down to two thirds of it, so the history's
    start then stays put for the next turns (the prefix cache keeps hitting)."""
    history = ""
    starts: list[str] = []
    for turn in range(40):
        history = next_history(history, f"question {turn}", f"answer {turn}.", max_chars=300)
        assert len(history) <= 300
        assert all(line.startswith(("User: ", "Assistant: ")) for line in history.split("\n"))
        starts.append(history.split("\n", 1)[0])
    assert history.endswith("User: question 39\nAssistant: answer 39.")
    assert starts[0] == "User: question 0" and starts[-1] != starts[0]
    # Each cut moves the start once, then it stays put for several turns; cutting a
    # line at a time would move it on every turn past the cap, some 30 times here.
    moves = sum(1 for a, b in itertools.pairwise(starts) if a != b)
    assert 1 <= moves <= len(starts) // 2


def test_unsaved_changes_of_the_same_session_survive_adopt() -> None:
    """Adopting the same session keeps its unsaved mark; another session's copy is clean."""
    view = SessionView()
    view.adopt("s", SEEDED, unsaved=True)
    view.adopt("s", SEEDED)
    assert view.unsaved
    view.adopt("t", BASE)
    assert not view.unsaved


def test_deferred_home_marks_the_copy_unsaved() -> None:
    """During a server-history turn the chat actor is kept in the copy, stored at its end."""
    view = SessionView()
    view.adopt("s", SEEDED)
    assert view.with_home("s", "chat-1", defer=True) is None
    assert view.settings is not None and view.settings.chat_actor == "chat-1"
    assert view.take_unsaved() == ("s", view.settings)


def test_update_keeps_the_copys_history() -> None:
    """Persona settings stored while a turn appended its exchange do not drop it."""
    view = SessionView()
    view.adopt("s", SEEDED)
    stale = msgspec.structs.replace(BASE, persona_style="nerdy")
    view.update("s", stale)
    assert view.settings is not None
    assert (view.settings.persona_style, view.settings.history) == ("nerdy", SEEDED.history)
    assert view.unsaved


def test_start_ack_says_when_the_server_keeps_the_history() -> None:
    """Only a server_history start's ack carries server_history: true."""
    plain = start_ack(BASE, session_id="s", turn_id="t", chat_model="c", tool_model=None)
    assert "server_history" not in plain
    kept = start_ack(
        BASE, session_id="s", turn_id="t", chat_model="c", tool_model=None, server_history=True
    )
    assert kept["server_history"] is True
