"""msgpack round trips of every bus event and the decoder's failure modes; no I/O."""

from __future__ import annotations

import msgspec
import pytest

from bus.codec import BusDecodeError, Codec
from bus.events import (
    Accepted,
    Cancel,
    ChatStart,
    Done,
    Error,
    Heartbeat,
    Persona,
    Rejected,
    Token,
    ToolCall,
    ToolCallSpec,
    ToolStart,
    Warm,
    Warmed,
    request_id,
)

FULL_PERSONA = Persona(
    assistant_gender="man",
    persona_style="savage",
    user_identity="woman",
    persona_text="You are Rex.",
    now="25/11/2026 Wednesday 09:41 AM (morning)",
)

INBOUND = [
    ToolStart("s1", "t1", "open spotify"),
    ToolStart("s1", "t1", "open spotify", history_text="user: hi"),
    ChatStart("s1", "t1", "hello", Persona()),
    ChatStart("s1", "t1", "hello", FULL_PERSONA, history_text="user: hi\nbot: yo", seed=42),
    Warm("s1", "w1", "persona", FULL_PERSONA),
    Warm("s1", "w2", "history", Persona(), history_text="user: hi"),
    Cancel("s1", "t1"),
    Cancel("s1", "t1", reason="barge_in"),
]

OUTBOUND = [
    ToolCall("s1", "t1", 1, "no", "[]"),
    ToolCall(
        "s1",
        "t1",
        1,
        "yes",
        '[{"name": "play", "arguments": {"q": "mix"}}]',
        (ToolCallSpec("play", {"q": "mix", "n": 2, "deep": {"a": [1, 2]}}), ToolCallSpec("stop")),
    ),
    Token("s1", "t1", 2, "Hel"),
    Token("s1", "t1", 3, ""),
    Done("s1", "t1", 4, "chat", "stop"),
    Done("s1", "t1", 9, "tool", "length", 100, 10, 64),
    Done("s1", "t1", 5, "chat", "cancelled"),
    Error("s1", "t1", 5, "chat", "engine_error", "boom"),
    Warmed("s1", "w1", "persona", 1234),
    Warmed("s1", "w1", "history", 99, tokens=12),
]

REPLIES = [
    Accepted("s1", "t1", "actor-1", "tool"),
    Accepted("s1", "t1", "actor-2", "chat"),
    Rejected("s1", "t1", "actor-1", "busy", "too many running"),
    Warmed("s1", "w1", "history", 7),
]

HEARTBEATS = [
    Heartbeat(actor_id="a1", kind="tool", interval_s=0.25),
    Heartbeat(actor_id="a2", kind="chat", interval_s=1.5, running=3, ready=False, draining=True),
    Heartbeat(actor_id="a3", kind="chat", interval_s=0.25, running=2, limit=4, turns=1),
]


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


@pytest.mark.parametrize("event", INBOUND, ids=repr)
def test_inbound_round_trip(codec: Codec, event: msgspec.Struct) -> None:
    """Every inbound event decodes back to an equal value of the same type."""
    decoded = codec.decode_inbound(codec.encode(event))
    assert type(decoded) is type(event)
    assert decoded == event


@pytest.mark.parametrize("event", OUTBOUND, ids=repr)
def test_outbound_round_trip(codec: Codec, event: msgspec.Struct) -> None:
    """Every outbound event decodes back to an equal value of the same type."""
    decoded = codec.decode_outbound(codec.encode(event))
    assert type(decoded) is type(event)
    assert decoded == event


@pytest.mark.parametrize("event", REPLIES, ids=repr)
def test_reply_round_trip(codec: Codec, event: msgspec.Struct) -> None:
    """Every reply to a start or warm decodes back to an equal value of the same type."""
    decoded = codec.decode_reply(codec.encode(event))
    assert type(decoded) is type(event)
    assert decoded == event


@pytest.mark.parametrize("beat", HEARTBEATS, ids=repr)
def test_heartbeat_round_trip(codec: Codec, beat: Heartbeat) -> None:
    """A heartbeat decodes back to an equal Heartbeat."""
    assert codec.decode_heartbeat(codec.encode(beat)) == beat


def test_toolcall_specs_decode_as_structs(codec: Codec) -> None:
    """Tool call specs come back as a tuple of ToolCallSpec, not raw lists."""
    event = OUTBOUND[1]
    decoded = codec.decode_outbound(codec.encode(event))
    assert isinstance(decoded, ToolCall)
    assert isinstance(decoded.calls, tuple)
    assert all(isinstance(call, ToolCallSpec) for call in decoded.calls)
    assert decoded.calls[1].arguments == {}


@pytest.mark.parametrize("event", INBOUND + OUTBOUND + REPLIES, ids=repr)
def test_tag_then_ids_lead_the_array(codec: Codec, event: msgspec.Struct) -> None:
    """On the wire an event is an array: its tag, then session_id, then turn_id."""
    raw = msgspec.msgpack.decode(codec.encode(event))
    assert isinstance(raw, list)
    assert raw[0] == type(event).__struct_config__.tag
    assert raw[1:3] == [event.session_id, event.turn_id]  # type: ignore[attr-defined]


def test_token_wire_layout(codec: Codec) -> None:
    """A token is exactly ``[tag, session_id, turn_id, seq, text]``."""
    assert msgspec.msgpack.decode(codec.encode(Token("s", "t", 7, "hi"))) == [
        "token",
        "s",
        "t",
        7,
        "hi",
    ]


def test_array_like_keeps_trailing_defaults(codec: Codec) -> None:
    """msgspec ignores ``omit_defaults`` on array_like structs (jcrist/msgspec#720): defaults stay.

    ``bus/events.py`` says ``omit_defaults`` drops trailing defaults; with array_like it does
    not, so a Done always carries its three usage counters and its (absent) timing.
    Decoders accept both forms.
    """
    raw = msgspec.msgpack.decode(codec.encode(Done("s", "t", 1, "chat", "stop")))
    assert raw == ["done", "s", "t", 1, "chat", "stop", 0, 0, 0, None]


def test_missing_trailing_defaults_decode(codec: Codec) -> None:
    """An older sender that omits trailing fields with defaults still decodes (schema evolution)."""
    data = msgspec.msgpack.encode(["done", "s", "t", 3, "chat", "stop"])
    assert codec.decode_outbound(data) == Done("s", "t", 3, "chat", "stop")


def test_extra_trailing_fields_are_ignored(codec: Codec) -> None:
    """A newer sender's extra trailing array items are dropped, so old decoders keep working.

    msgspec decodes an ``array_like`` struct (without ``forbid_unknown_fields``) from an
    array longer than its fields by ignoring the extra trailing items.
    """
    data = msgspec.msgpack.encode(["token", "s", "t", 1, "hi", "new-field", {"x": 1}])
    assert codec.decode_outbound(data) == Token("s", "t", 1, "hi")


def test_heartbeat_extra_trailing_fields_are_ignored(codec: Codec) -> None:
    """An untagged heartbeat with extra trailing items decodes to the known fields."""
    data = msgspec.msgpack.encode(["a1", "tool", 0.5, 2, True, False, "", 4, 1, "future"])
    assert codec.decode_heartbeat(data) == Heartbeat(
        actor_id="a1", kind="tool", interval_s=0.5, running=2, limit=4, turns=1
    )


def test_heartbeat_without_load_decodes_as_unlimited(codec: Codec) -> None:
    """An older actor's heartbeat, without limit and turns, decodes with limit 0 (unknown)."""
    data = msgspec.msgpack.encode(["a1", "chat", 0.5, 2, True, False, "i1"])
    beat = codec.decode_heartbeat(data)
    assert (beat.limit, beat.turns, beat.instance) == (0, 0, "i1")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack opcode
        b"not msgpack at all",
        msgspec.msgpack.encode({"type": "token"}),
        msgspec.msgpack.encode(42),
        msgspec.msgpack.encode([]),
        msgspec.msgpack.encode(["nope", "s", "t"]),
        msgspec.msgpack.encode(["token", "s"]),  # too short
    ],
    ids=["empty", "bad-opcode", "text", "map", "int", "empty-array", "unknown-tag", "short"],
)
def test_garbage_raises_bus_decode_error(codec: Codec, data: bytes) -> None:
    """A payload that is not an outbound event raises BusDecodeError, chained to msgspec's error."""
    with pytest.raises(BusDecodeError) as info:
        codec.decode_outbound(data)
    assert isinstance(info.value.__cause__, msgspec.DecodeError)


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (msgspec.msgpack.encode(["token", "s", "t", "one", "hi"]), "$[3]"),
        (msgspec.msgpack.encode(["token", 5, "t", 1, "hi"]), "$[1]"),
        (msgspec.msgpack.encode(["done", "s", "t", 1, "robot", "stop"]), "$[4]"),
        (msgspec.msgpack.encode(["done", "s", "t", 1, "chat", "exploded"]), "$[5]"),
        (msgspec.msgpack.encode(["toolcall", "s", "t", 1, "maybe", "raw"]), "$[4]"),
    ],
    ids=["str-seq", "int-session", "bad-kind", "bad-reason", "bad-status"],
)
def test_wrong_typed_field_raises_bus_decode_error(codec: Codec, data: bytes, where: str) -> None:
    """A field of the wrong type or outside its Literal raises BusDecodeError naming its path."""
    with pytest.raises(BusDecodeError) as info:
        codec.decode_outbound(data)
    assert str(info.value).endswith(f"at `{where}`")
    assert isinstance(info.value.__cause__, msgspec.ValidationError)


def test_wrong_typed_nested_field(codec: Codec) -> None:
    """A bad value inside the nested persona is reported, not accepted."""
    bad = ["chat_start", "s", "t", "hi", ["robot", "wholesome", "non-binary", None, ""], "", None]
    with pytest.raises(BusDecodeError, match=r"\$\[4\]\[0\]"):
        codec.decode_inbound(msgspec.msgpack.encode(bad))


@pytest.mark.parametrize(
    ("event", "decode"),
    [
        (Token("s", "t", 1, "x"), "decode_inbound"),
        (ToolStart("s", "t", "x"), "decode_outbound"),
        (Cancel("s", "t"), "decode_reply"),
        (Token("s", "t", 1, "x"), "decode_heartbeat"),
    ],
    ids=repr,
)
def test_wrong_direction_is_rejected(codec: Codec, event: msgspec.Struct, decode: str) -> None:
    """An event of another union is rejected by each direction's decoder."""
    with pytest.raises(BusDecodeError):
        getattr(codec, decode)(codec.encode(event))


def test_bus_decode_error_is_a_value_error() -> None:
    """Handlers catching ValueError also catch a bad payload."""
    assert issubclass(BusDecodeError, ValueError)


def test_events_are_frozen() -> None:
    """Events are immutable once built."""
    token = Token("s", "t", 1, "x")
    with pytest.raises(AttributeError):
        token.text = "y"  # type: ignore[misc]


def test_request_id() -> None:
    """One engine request id per actor kind, session and turn."""
    assert request_id("chat", "s1", "t1") == "chat:s1:t1"
    assert request_id("tool", "s1", "t1") != request_id("chat", "s1", "t1")
