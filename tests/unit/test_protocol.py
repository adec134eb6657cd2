"""ClientProtocol.parse on every message type and every bad input; no I/O."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from bus import codes
from edge.errors import EdgeError, ProtocolError
from edge.messages import (
    MESSAGE_TYPES,
    CancelMessage,
    EndMessage,
    PingMessage,
    SetPersonaMessage,
    StartMessage,
    WarmHistoryMessage,
    WarmPersonaMessage,
)
from edge.protocol import ClientProtocol, ProtocolLimits

LIMITS = ProtocolLimits(max_utterance_chars=100, max_history_chars=200, max_persona_chars=50)


@pytest.fixture(scope="module")
def protocol() -> ClientProtocol:
    return ClientProtocol(LIMITS)


def dumps(**fields: Any) -> str:
    return json.dumps(fields)


def start(**extra: Any) -> str:
    return dumps(type="start", session_id="s1", user_utterance="hi", **extra)


def parse_error(protocol: ClientProtocol, data: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        protocol.parse(data)
    return info.value


# --- valid messages ---------------------------------------------------------------


def test_start_minimal(protocol: ClientProtocol) -> None:
    """A start with only the required fields gets the documented defaults."""
    message = protocol.parse(start())
    assert message == StartMessage(session_id="s1", user_utterance="hi")
    assert message.history_text == ""
    assert message.assistant_gender is None
    assert message.persona_style is None
    assert message.user_identity is None
    assert message.persona_text is msgspec.UNSET


def test_start_full(protocol: ClientProtocol) -> None:
    """A start with every documented field keeps each value."""
    message = protocol.parse(
        start(
            persona_text="You are Rex.",
            persona_style="savage",
            assistant_gender="man",
            user_identity="non-binary",
            history_text="user: yo\nbot: hey",
        )
    )
    assert message == StartMessage(
        session_id="s1",
        user_utterance="hi",
        history_text="user: yo\nbot: hey",
        assistant_gender="man",
        persona_style="savage",
        user_identity="non-binary",
        persona_text="You are Rex.",
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (dumps(type="cancel"), CancelMessage()),
        (dumps(type="ping"), PingMessage()),
        (dumps(type="end"), EndMessage()),
        (dumps(type="warm_persona"), WarmPersonaMessage()),
        (
            dumps(
                type="warm_persona",
                persona_text="p",
                persona_style="nerdy",
                assistant_gender="woman",
                user_identity="man",
            ),
            WarmPersonaMessage(
                persona_text="p",
                persona_style="nerdy",
                assistant_gender="woman",
                user_identity="man",
            ),
        ),
        (dumps(type="warm_history"), WarmHistoryMessage()),
        (dumps(type="warm_history", history_text="h"), WarmHistoryMessage(history_text="h")),
        (dumps(type="set_persona"), SetPersonaMessage()),
        (
            dumps(
                type="set_persona",
                session_id="s1",
                assistant_gender="m",
                persona_style="flirty",
                user_identity="woman",
                persona_text="",
            ),
            SetPersonaMessage(
                session_id="s1",
                assistant_gender="m",
                persona_style="flirty",
                user_identity="woman",
                persona_text="",
            ),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_other_messages(protocol: ClientProtocol, data: str, expected: object) -> None:
    """Each message type parses to its Struct, in minimal and full forms."""
    message = protocol.parse(data)
    assert type(message) is type(expected)
    assert message == expected


def test_every_message_type_is_covered(protocol: ClientProtocol) -> None:
    """Every registered type name parses when given the fields it requires."""
    required = {"start": {"session_id": "s1", "user_utterance": "hi"}}
    for name, struct in MESSAGE_TYPES.items():
        message = protocol.parse(json.dumps({"type": name, **required.get(name, {})}))
        assert type(message) is struct


def test_server_history_start(protocol: ClientProtocol) -> None:
    """server_history parses; history_sent says whether history_text was there at all."""
    bare = protocol.parse(start(server_history=True))
    assert isinstance(bare, StartMessage)
    assert bare.server_history and not bare.history_sent and bare.history_text == ""
    seeded = protocol.parse(start(server_history=True, history_text=""))
    assert isinstance(seeded, StartMessage) and seeded.history_sent
    plain = protocol.parse(start(history_text="User: hi"))
    assert plain == StartMessage(session_id="s1", user_utterance="hi", history_text="User: hi")


@pytest.mark.parametrize("server_history", [True, False])
def test_history_sent_is_never_the_clients_word(
    protocol: ClientProtocol, server_history: bool
) -> None:
    """A client that sends history_sent itself changes nothing: the protocol sets it."""
    message = protocol.parse(start(server_history=server_history, history_sent=True))
    assert isinstance(message, StartMessage) and not message.history_sent


def test_unknown_extra_fields_are_ignored(protocol: ClientProtocol) -> None:
    """Fields the edge does not know (sent by clients of the original server) are ignored."""
    message = protocol.parse(start(seed=5, sampling={"t": 1}, stream=True, extra=None))
    assert message == StartMessage(session_id="s1", user_utterance="hi")
    assert protocol.parse(dumps(type="cancel", reason="barge-in")) == CancelMessage()


@pytest.mark.parametrize(
    "gender", ["woman", "man", "female", "male", "f", "m", "w", "Female", " MAN ", "F"]
)
def test_gender_aliases_accepted(protocol: ClientProtocol, gender: str) -> None:
    """Every documented gender spelling, in any case and padding, is accepted as sent."""
    assert protocol.parse(start(assistant_gender=gender)).assistant_gender == gender


@pytest.mark.parametrize(
    "style", ["flirty", "religious", "savage", "delulu", "spiritual", "nerdy", "wholesome"]
)
def test_persona_styles_accepted(protocol: ClientProtocol, style: str) -> None:
    """Every known persona style is accepted."""
    assert protocol.parse(start(persona_style=style)).persona_style == style


@pytest.mark.parametrize("identity", ["woman", "man", "non-binary"])
def test_user_identities_accepted(protocol: ClientProtocol, identity: str) -> None:
    """Every known user identity is accepted."""
    assert protocol.parse(start(user_identity=identity)).user_identity == identity


@pytest.mark.parametrize("field", ["persona_style", "user_identity"])
@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_style_and_identity_mean_unchanged(
    protocol: ClientProtocol, field: str, blank: str
) -> None:
    """A blank persona_style or user_identity is accepted (it keeps the session's value)."""
    assert getattr(protocol.parse(start(**{field: blank})), field) == blank


def test_persona_text_absent_is_unset(protocol: ClientProtocol) -> None:
    """An absent persona_text is UNSET, so the session's override is kept."""
    assert protocol.parse(start()).persona_text is msgspec.UNSET


def test_persona_text_null_is_none(protocol: ClientProtocol) -> None:
    """An explicit null persona_text is None (clear the override), distinct from absent."""
    assert protocol.parse(start(persona_text=None)).persona_text is None


@pytest.mark.parametrize("kind", ["warm_persona", "set_persona"])
def test_persona_text_unset_vs_null_on_other_messages(protocol: ClientProtocol, kind: str) -> None:
    """warm_persona and set_persona also tell absent persona_text from null."""
    assert protocol.parse(dumps(type=kind)).persona_text is msgspec.UNSET
    assert protocol.parse(dumps(type=kind, persona_text=None)).persona_text is None


@pytest.mark.parametrize(
    ("field", "limit"),
    [("user_utterance", 100), ("history_text", 200), ("persona_text", 50)],
)
def test_fields_at_their_limit_are_accepted(
    protocol: ClientProtocol, field: str, limit: int
) -> None:
    """A field exactly at its character limit is accepted."""
    fields = {"session_id": "s1", "user_utterance": "hi", field: "x" * limit}
    assert getattr(protocol.parse(dumps(type="start", **fields)), field) == "x" * limit


def test_limit_counts_characters_not_bytes(protocol: ClientProtocol) -> None:
    """Length limits count characters, so multi-byte text at the limit is accepted."""
    assert protocol.parse(start(persona_text="é" * 50)).persona_text == "é" * 50


def test_default_limits() -> None:
    """The default limits match the edge config defaults."""
    limits = ProtocolLimits()
    assert (limits.max_utterance_chars, limits.max_history_chars, limits.max_persona_chars) == (
        16_000,
        256_000,
        64_000,
    )


def test_parse_is_stateless(protocol: ClientProtocol) -> None:
    """Parsing holds no state: the same text parses to equal messages twice."""
    assert protocol.parse(start()) == protocol.parse(start())


# --- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"{}", start().encode()], ids=["empty", "obj", "start"])
def test_binary_frame_is_invalid_message(protocol: ClientProtocol, data: bytes) -> None:
    """Binary frames are refused even when they hold valid JSON."""
    assert parse_error(protocol, data).code == codes.INVALID_MESSAGE


@pytest.mark.parametrize(
    "data",
    ["", " ", "{", "{'type': 'start'}", '{"type": "start",}', "nul", start() + " x", "{}{}"],
)
def test_invalid_json(protocol: ClientProtocol, data: str) -> None:
    """Text that is not one JSON value is invalid_json."""
    assert parse_error(protocol, data).code == codes.INVALID_JSON


@pytest.mark.parametrize(
    "data", ["[]", '[{"type": "start"}]', "1", "1.5", '"start"', "null", "true"]
)
def test_non_object_is_invalid_message(protocol: ClientProtocol, data: str) -> None:
    """A JSON value that is not an object is invalid_message."""
    assert parse_error(protocol, data).code == codes.INVALID_MESSAGE


@pytest.mark.parametrize("data", ["{}", '{"session_id": "s1"}', '{"type": null}'])
def test_missing_type(protocol: ClientProtocol, data: str) -> None:
    """An object without a type (or with a null type) is missing_field."""
    assert parse_error(protocol, data).code == codes.MISSING_FIELD


@pytest.mark.parametrize(
    "kind", ["stop", "START", "", " start", 1, 0, True, ["start"], {"t": "start"}, 1.5], ids=repr
)
def test_unknown_or_non_string_type(protocol: ClientProtocol, kind: object) -> None:
    """An unknown type name or a non-string type is unknown_message_type."""
    error = parse_error(protocol, json.dumps({"type": kind}))
    assert error.code == codes.UNKNOWN_MESSAGE_TYPE
    assert "start" in error.message  # lists the known types


@pytest.mark.parametrize(
    ("fields", "missing"),
    [
        ({"user_utterance": "hi"}, "session_id"),
        ({"session_id": "s1"}, "user_utterance"),
        ({}, None),
    ],
)
def test_start_missing_required(
    protocol: ClientProtocol, fields: dict[str, Any], missing: str | None
) -> None:
    """A start without session_id or user_utterance is missing_field, naming the field."""
    error = parse_error(protocol, dumps(type="start", **fields))
    assert error.code == codes.MISSING_FIELD
    if missing is not None:
        assert missing in error.message


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("start", "session_id", 1),
        ("start", "session_id", None),
        ("start", "session_id", ["s1"]),
        ("start", "user_utterance", True),
        ("start", "user_utterance", None),
        ("start", "user_utterance", 3.5),
        ("start", "history_text", ["user: hi"]),
        ("start", "history_text", None),
        ("start", "history_text", {"a": 1}),
        ("start", "assistant_gender", 1),
        ("start", "persona_style", ["savage"]),
        ("start", "user_identity", False),
        ("start", "persona_text", 5),
        ("start", "persona_text", {"text": "p"}),
        ("start", "server_history", 1),
        ("start", "server_history", "yes"),
        ("set_persona", "session_id", 7),
        ("set_persona", "persona_text", []),
        ("warm_persona", "persona_text", 1),
        ("warm_persona", "assistant_gender", True),
        ("warm_history", "history_text", 0),
        ("warm_history", "history_text", None),
    ],
)
def test_wrong_typed_fields(protocol: ClientProtocol, kind: str, field: str, value: object) -> None:
    """A field of the wrong JSON type is invalid_field, and the message names the field."""
    fields: dict[str, Any] = {"session_id": "s1", "user_utterance": "hi"} if kind == "start" else {}
    fields[field] = value
    error = parse_error(protocol, dumps(type=kind, **fields))
    assert error.code == codes.INVALID_FIELD
    assert f"$.{field}" in error.message


@pytest.mark.parametrize(
    "session_id",
    ["", "a.b", "*", ">", "a*", "s 1", "x" * 129, "café", "s1\n", "yap.session.>"],
)
@pytest.mark.parametrize("kind", ["start", "set_persona"])
def test_bad_session_ids(protocol: ClientProtocol, kind: str, session_id: str) -> None:
    """Session ids that are not safe subject tokens are invalid_session_id."""
    error = parse_error(protocol, dumps(type=kind, session_id=session_id, user_utterance="hi"))
    assert error.code == codes.INVALID_SESSION_ID


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("assistant_gender", "robot"),
        ("assistant_gender", ""),
        ("assistant_gender", "non-binary"),
        ("assistant_gender", "fem"),
        ("persona_style", "evil"),
        ("persona_style", "Flirty"),
        ("user_identity", "robot"),
        ("user_identity", "Woman"),
        ("user_identity", "female"),
    ],
)
@pytest.mark.parametrize("kind", ["start", "set_persona", "warm_persona"])
def test_bad_persona_values(protocol: ClientProtocol, kind: str, field: str, value: str) -> None:
    """An unknown gender, style or identity is invalid_field on every message that carries one."""
    fields: dict[str, Any] = {"session_id": "s1", "user_utterance": "hi"} if kind == "start" else {}
    fields[field] = value
    error = parse_error(protocol, dumps(type=kind, **fields))
    assert error.code == codes.INVALID_FIELD
    assert field in error.message


@pytest.mark.parametrize(
    ("kind", "field", "limit"),
    [
        ("start", "user_utterance", 100),
        ("start", "history_text", 200),
        ("start", "persona_text", 50),
        ("warm_history", "history_text", 200),
        ("warm_persona", "persona_text", 50),
        ("set_persona", "persona_text", 50),
    ],
)
def test_too_long_fields(protocol: ClientProtocol, kind: str, field: str, limit: int) -> None:
    """A field one character over its limit is field_too_long, naming the field and limit."""
    fields: dict[str, Any] = {"session_id": "s1", "user_utterance": "hi"} if kind == "start" else {}
    fields[field] = "x" * (limit + 1)
    error = parse_error(protocol, dumps(type=kind, **fields))
    assert error.code == codes.FIELD_TOO_LONG
    assert field in error.message
    assert str(limit) in error.message


def test_session_id_checked_before_lengths(protocol: ClientProtocol) -> None:
    """A start with both a bad session id and a long utterance reports the session id."""
    error = parse_error(protocol, dumps(type="start", session_id="a.b", user_utterance="x" * 500))
    assert error.code == codes.INVALID_SESSION_ID


def test_protocol_error_carries_code_and_message() -> None:
    """ProtocolError exposes its code and message and sits under the edge's root."""
    error = ProtocolError(codes.INVALID_JSON, "bad")
    assert (error.code, error.message, str(error)) == ("invalid_json", "bad", "bad")
    assert isinstance(error, EdgeError)


@pytest.mark.parametrize(
    ("text", "escape"),
    [
        (r'"\ud800"', r"\ud800"),
        (r'{"type":"ping","x":"a\udbff"}', r"\udbff"),
        (r'{"type":"ping","x":"\udc00"}', r"\udc00"),
        (r'{"type":"ping","x":"\ud800\u0041"}', r"\ud800"),
    ],
)
def test_lone_surrogate_escape_says_what_is_wrong(
    protocol: ClientProtocol, text: str, escape: str
) -> None:
    """A lone UTF-16 surrogate escape is invalid_json with a message naming the escape."""
    error = parse_error(protocol, text)
    assert error.code == codes.INVALID_JSON
    assert f"{escape} is a lone UTF-16 surrogate escape" in error.message
    assert "truncated" not in error.message


def test_escaped_backslash_before_u_is_not_a_surrogate(protocol: ClientProtocol) -> None:
    """``\\ud800`` is a backslash and text, so a truncated frame with it says truncated."""
    error = parse_error(protocol, r'"\\ud800')
    assert error.code == codes.INVALID_JSON
    assert "surrogate" not in error.message


def test_surrogate_pair_escape_is_a_character(protocol: ClientProtocol) -> None:
    """A high-low pair is one character (an emoji) and decodes."""
    message = protocol.parse(r'{"type":"start","session_id":"s","user_utterance":"\ud83d\ude00"}')
    assert isinstance(message, StartMessage) and message.user_utterance == "\U0001f600"
