"""One connection's session, the persona rules and the server-kept history, without I/O.

The connection loads and stores settings (``edge.sessions``); what a message does
to them, which session a connection is on, and the frames and bus requests that
follow from the settings are decided here, synchronously, and unit-tested so.

Server-kept history. A start with ``server_history`` runs with the session's
stored history as its ``history_text`` (``turn_settings``, ``leg_message``); a
``history_text`` sent with it (even ``""``) replaces the stored one first, which
is how a client seeds, migrates or clears it. When the turn ends, its exchange is
appended in the canonical format (``bus.history``) and the whole capped with
``cap_history``; what is appended depends on how the turn ended (``turn_reply``):

==============================================  ====================================
the turn                                        appended
==============================================  ====================================
completed                                       the utterance and the reply: what
                                                the ``final`` frame said
cancelled by the client (cancel, a barge-in     the utterance and the part of the
start, end) after some reply text was sent      reply the client was sent
cancelled before any reply text was sent        nothing: the client saw no reply and
                                                will most likely say it again
failed (any error code), or the client          nothing: the client is told to retry,
went away                                       and a retry carries the utterance
==============================================  ====================================

A completed turn's line is byte for byte the history that the chat actor predicted
and warmed for the next turn (``actors.chat``: the history it was sent, this
utterance, the reply it streamed), so a client that sends only utterances gets the
warm hit turn after turn; a turn whose new history the cap cut misses it once.

A server-history turn stores its session once, when it ends: what the start
changed (a new session, persona fields, a seed), the chat actor it went to and the
exchange ride on that one write (``SessionView.unsaved``).
"""

from __future__ import annotations

from typing import Final

import msgspec

from bus import codes
from bus.events import Warm
from bus.history import append_turn, cap_history, normalize_text
from bus.persona import normalize_gender
from edge import frames
from edge.errors import ProtocolError
from edge.messages import SetPersonaMessage, StartMessage, WarmHistoryMessage, WarmPersonaMessage
from edge.sessions import SessionSettings
from edge.turn import TurnOutcome

__all__ = [
    "CLIENT_STOPS",
    "SessionView",
    "apply_persona",
    "leg_message",
    "next_history",
    "start_ack",
    "start_settings",
    "turn_reply",
    "turn_settings",
    "warm_event",
]

# Why the connection stops a running turn: these are the client's own doing, and
# what it was sent of the reply by then stays in a server-kept history. The other
# reasons ("disconnect") are not: nothing of the turn is kept.
CLIENT_STOPS: Final = frozenset({"cancel", "barge_in", "end"})

PersonaMessage = StartMessage | SetPersonaMessage | WarmPersonaMessage


class SessionView:
    """Which session a connection is on and its copy of that session's settings.

    The copy saves a store read per turn: it is read once per connection and
    session and written back only when something changes.
    """

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.settings: SessionSettings | None = None
        # The copy holds changes the store has not got yet; the running turn's end
        # stores them (``take_unsaved``). Only server-history turns defer writes.
        self.unsaved = False

    def cached(self, session_id: str) -> SessionSettings | None:
        """The copy, if it is of ``session_id``."""
        return self.settings if session_id == self.session_id else None

    def adopt(self, session_id: str, settings: SessionSettings, *, unsaved: bool = False) -> None:
        """Put the connection on ``session_id`` with ``settings``; ``unsaved``: the store
        lacks them. Changes not yet stored of the same session stay unsaved."""
        self.unsaved = unsaved or (self.unsaved and session_id == self.session_id)
        self.session_id = session_id
        self.settings = settings

    def update(self, session_id: str, settings: SessionSettings) -> None:
        """Keep ``settings`` if they are of this connection's session (set_persona may
        name another one, which is stored but does not move the connection).

        The copy's history wins: a turn that ended while ``settings`` were being
        stored appended its exchange to the copy, not to them.
        """
        if session_id != self.session_id:
            return
        current = self.settings
        if current is not None and current.history != settings.history:
            settings = msgspec.structs.replace(settings, history=current.history)
            self.unsaved = True
        self.settings = settings

    def with_home(
        self, session_id: str, actor_id: str, *, defer: bool = False
    ) -> SessionSettings | None:
        """The settings with ``actor_id`` as the session's chat actor (affinity), if
        that changes them; None when there is nothing to store now. ``defer``: a
        server-history turn runs, whose end stores the copy anyway."""
        settings = self.cached(session_id)
        if settings is None or not actor_id or settings.chat_actor == actor_id:
            return None
        self.settings = msgspec.structs.replace(settings, chat_actor=actor_id)
        if defer:
            self.unsaved = True
            return None
        return self.settings

    def end_turn(
        self,
        message: StartMessage,
        *,
        outcome: TurnOutcome,
        reason: str,
        sent: str,
        max_chars: int,
    ) -> bool:
        """A turn ended: add its exchange to the copy's server-kept history, as
        ``turn_reply`` says. True when the history changed (the copy is then unsaved).

        Args:
            message: the start as the legs got it (``leg_message``): its
                ``history_text`` is the history the turn ran with.
            outcome: how the turn ended.
            reason: why the connection stopped it, for a cancelled turn.
            sent: the reply text the client was sent, as sent.
            max_chars: the history's cap.
        """
        if not message.server_history:
            return False
        settings = self.cached(message.session_id)
        reply = turn_reply(outcome, reason, sent)
        if settings is None or reply is None:
            return False
        history = next_history(
            message.history_text, message.user_utterance, reply, max_chars=max_chars
        )
        if history == settings.history:
            return False
        self.settings = msgspec.structs.replace(settings, history=history)
        self.unsaved = True
        return True

    def take_unsaved(self) -> tuple[str, SessionSettings] | None:
        """The session and its copy when the store lacks some of it, which the caller
        then stores; marked saved. None when there is nothing to store."""
        if not self.unsaved or self.session_id is None or self.settings is None:
            return None
        self.unsaved = False
        return self.session_id, self.settings


def apply_persona(
    settings: SessionSettings, message: PersonaMessage
) -> tuple[SessionSettings, dict[str, object]]:
    """Session settings with the message's persona fields applied, and what changed
    (keyed as the ``set_persona`` ack reports it)."""
    changed: dict[str, object] = {}
    updates: dict[str, object] = {}
    if message.assistant_gender is not None:
        updates["assistant_gender"] = normalize_gender(message.assistant_gender)
    if message.persona_style is not None and message.persona_style.strip():
        updates["persona_style"] = message.persona_style.strip()
    if message.user_identity is not None and message.user_identity.strip():
        updates["user_identity"] = message.user_identity.strip()
    persona_text = message.persona_text
    if persona_text is not msgspec.UNSET:
        updates["persona_text"] = persona_text or None
    for key, value in updates.items():
        if getattr(settings, key) != value:
            if key == "persona_text":
                changed["persona_text_override"] = value is not None
            else:
                changed[key] = value
    if not updates:
        return settings, changed
    return msgspec.structs.replace(settings, **updates), changed


def start_settings(
    settings: SessionSettings, message: StartMessage
) -> tuple[SessionSettings, bool]:
    """The settings a start runs with, and whether they changed.

    Raises:
        ProtocolError: ``missing_field`` when the session has no gender yet and the
            start names none (a session's first start must).
    """
    updated, changed = apply_persona(settings, message)
    if updated.assistant_gender is None:
        raise ProtocolError(
            codes.MISSING_FIELD,
            "assistant_gender is required on a session's first start: woman or man",
        )
    return updated, bool(changed)


def turn_settings(
    settings: SessionSettings,
    message: StartMessage,
    current: SessionSettings | None,
    *,
    max_chars: int,
) -> tuple[SessionSettings, bool]:
    """The settings a start runs with, its history included, and whether it was seeded.

    Args:
        settings: what ``start_settings`` made of the start.
        message: the start.
        current: the connection's copy of the session now, if it is on it. A start's
            settings are worked out before it barges in; the turn it stopped may
            then have appended its exchange to the copy (``SessionView.end_turn``),
            and that history is the session's.
        max_chars: the history's cap.

    With ``server_history``, a ``history_text`` sent with the start replaces the
    stored history, capped as every stored history is. Without, the stored history
    is left alone: the turn runs on the message's own.
    """
    if current is not None and current.history != settings.history:
        settings = msgspec.structs.replace(settings, history=current.history)
    if not (message.server_history and message.history_sent):
        return settings, False
    history = cap_history(message.history_text, max_chars)
    if history == settings.history:
        return settings, False
    return msgspec.structs.replace(settings, history=history), True


def leg_message(message: StartMessage, settings: SessionSettings) -> StartMessage:
    """The start as the actors get it: with ``server_history``, the session's history
    is its ``history_text``; an old client's start goes as it came."""
    if not message.server_history or message.history_text == settings.history:
        return message
    return msgspec.structs.replace(message, history_text=settings.history)


def turn_reply(outcome: TurnOutcome, reason: str, sent: str) -> str | None:
    """The reply a server-kept history records for a turn that ended so, or None when
    the turn adds nothing (the rules in the module's table)."""
    if outcome == "completed":
        return sent
    if outcome == "cancelled" and reason in CLIENT_STOPS and normalize_text(sent):
        return sent
    return None


def next_history(history: str, user_utterance: str, reply: str, *, max_chars: int) -> str:
    """``history`` with one exchange appended (``append_turn``), capped (``cap_history``).

    Raises:
        ValueError: ``max_chars`` is negative.
    """
    return cap_history(append_turn(history, user_utterance, reply), max_chars)


def start_ack(
    settings: SessionSettings,
    *,
    session_id: str,
    turn_id: str,
    chat_model: str | None,
    tool_model: str | None,
    server_history: bool = False,
) -> frames.Frame:
    """The start's ack; with ``server_history`` it says so, so that a client can tell
    a server that keeps its history from one that ignored the field."""
    assert settings.assistant_gender is not None  # start_settings() made sure
    frame = frames.ack_start(
        session_id=session_id,
        seed=settings.seed,
        now=settings.now,
        assistant_gender=settings.assistant_gender,
        persona_style=settings.persona_style,
        persona_text_override=settings.persona_text is not None,
        chat_model=chat_model,
        tool_model=tool_model,
        turn_id=turn_id,
    )
    if server_history:
        frame["server_history"] = True
    return frame


def warm_event(
    message: WarmPersonaMessage | WarmHistoryMessage,
    settings: SessionSettings,
    *,
    session_id: str,
    warm_id: str,
    edge_id: str,
) -> Warm:
    """The bus request that warms what ``message`` names, on these settings."""
    if isinstance(message, WarmPersonaMessage):
        settings, _ = apply_persona(settings, message)
        return Warm(
            session_id, warm_id, segment="persona", persona=settings.persona(), edge_id=edge_id
        )
    return Warm(
        session_id,
        warm_id,
        segment="history",
        persona=settings.persona(),
        history_text=message.history_text,
        edge_id=edge_id,
    )
