"""One connection's session and the persona rules, without I/O.

The connection loads and stores settings (``edge.sessions``); what a message does
to them, which session a connection is on, and the frames and bus requests that
follow from the settings are decided here, synchronously, and unit-tested so.
"""

from __future__ import annotations

import msgspec

from bus import codes
from bus.events import Warm
from bus.persona import normalize_gender
from edge import frames
from edge.errors import ProtocolError
from edge.messages import SetPersonaMessage, StartMessage, WarmHistoryMessage, WarmPersonaMessage
from edge.sessions import SessionSettings

__all__ = ["SessionView", "apply_persona", "start_ack", "start_settings", "warm_event"]

PersonaMessage = StartMessage | SetPersonaMessage | WarmPersonaMessage


class SessionView:
    """Which session a connection is on and its copy of that session's settings.

    The copy saves a store read per turn: it is read once per connection and
    session and written back only when something changes.
    """

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.settings: SessionSettings | None = None

    def cached(self, session_id: str) -> SessionSettings | None:
        """The copy, if it is of ``session_id``."""
        return self.settings if session_id == self.session_id else None

    def adopt(self, session_id: str, settings: SessionSettings) -> None:
        self.session_id = session_id
        self.settings = settings

    def update(self, session_id: str, settings: SessionSettings) -> None:
        """Keep ``settings`` if they are of this connection's session (set_persona may
        name another one, which is stored but does not move the connection)."""
        if session_id == self.session_id:
            self.settings = settings

    def with_home(self, session_id: str, actor_id: str) -> SessionSettings | None:
        """The settings with ``actor_id`` as the session's chat actor (affinity), if
        that changes them; None when there is nothing to store."""
        settings = self.cached(session_id)
        if settings is None or not actor_id or settings.chat_actor == actor_id:
            return None
        self.settings = msgspec.structs.replace(settings, chat_actor=actor_id)
        return self.settings


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


def start_ack(
    settings: SessionSettings,
    *,
    session_id: str,
    turn_id: str,
    chat_model: str | None,
    tool_model: str | None,
) -> frames.Frame:
    assert settings.assistant_gender is not None  # start_settings() made sure
    return frames.ack_start(
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
