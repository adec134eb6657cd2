"""Random and mutated client frames against a live edge: each gets one stable answer.

Every generated frame carries what the protocol says it must get back (an error with
one of a few codes, or the normal answer of a valid message), worked out from the
README's protocol table, not from the edge's code. Frames are pipelined in batches;
answers that the edge produces in order (errors, pongs, cancel dones, set_persona
acks) are matched one to one, the asynchronous ones (warmed, a turn's frames) by count.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection

from bus.codes import ALL_CODES
from bus.persona import GENDER_ALIASES, PERSONA_STYLES, USER_IDENTITIES
from configs.schema import Config
from tests.support.stack import make_config, read_turn, recv_json, run_stack, start_message

# The one set of codes (the README's error table lists it): nothing else may appear.
KNOWN_CODES = ALL_CODES
UTTERANCE_LIMIT = 300
HISTORY_LIMIT = 600
PERSONA_LIMIT = 400
TAG_WIDTH = 6  # "t00042": every valid start's utterance begins with its own tag
# msgspec's decoder recurses per nesting level and Python's limit is 1000 frames;
# deeper input is covered by the dedicated tests at the bottom.
SAFE_DEPTH = 500
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
MESSAGE_TYPES = ("start", "cancel", "warm_persona", "warm_history", "set_persona", "ping", "end")
TURN_FRAME_TYPES = frozenset({"toolcall", "token", "final"})


def _fuzz_config(nats_url: str) -> Config:
    return make_config(
        nats_url,
        edge={
            # High enough that rate limiting never answers instead of the parser.
            "messages_per_minute": 1_000_000,
            "cancels_per_minute": 1_000_000,
            "max_utterance_chars": UTTERANCE_LIMIT,
            "max_history_chars": HISTORY_LIMIT,
            "max_persona_chars": PERSONA_LIMIT,
        },
    )


# --- what a frame must get back ----------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """``kind`` is error, pong, cancelled, persona_ack, warmed or turn."""

    kind: str
    codes: frozenset[str] = frozenset()

    @property
    def ordered(self) -> bool:
        """Answered from the read loop, so in the order the frames were sent."""
        return self.kind in ("error", "pong", "cancelled", "persona_ack")

    @property
    def harmless_mid_turn(self) -> bool:
        return self.kind in ("error", "pong", "warmed")


def _error(*codes: str) -> Expect:
    return Expect("error", frozenset(codes))


@dataclass(frozen=True)
class Raw:
    """A JSON token written as is: huge numbers, deep nesting, NaN."""

    text: str
    decodable: bool


@dataclass(frozen=True)
class Tagged:
    """A valid start's utterance: the turn's tag is put in front when it is sent."""

    suffix: str


@dataclass(frozen=True)
class Probe:
    payload: str | bytes | dict[str, Any]
    expect: Expect
    label: str

    def render(self, tag: str = "t00000") -> str | bytes:
        if isinstance(self.payload, dict):
            return _encode(self.payload, tag)
        return self.payload

    def __repr__(self) -> str:
        text = repr(self.render())
        return f"Probe({self.label}, {text[:160]}{'...' if len(text) > 160 else ''})"


def _encode(message: dict[str, Any], tag: str) -> str:
    raws: dict[str, str] = {}

    def plain(value: Any) -> Any:
        if isinstance(value, Raw):
            key = f"@@raw{len(raws)}@@"
            raws[key] = value.text
            return key
        if isinstance(value, Tagged):
            return f"{tag} {value.suffix}"
        return value

    text = json.dumps({k: plain(v) for k, v in message.items()}, ensure_ascii=False)
    for key, raw in raws.items():
        text = text.replace(json.dumps(key), raw, 1)
    return text


# --- strategies --------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
NUMBER_RAWS = st.sampled_from(
    [Raw(str(2**1000), True), Raw(str(-(2**1000)), True), Raw("1e308", True), Raw("-0", True)]
)
ARRAY_RAWS = st.integers(2, SAFE_DEPTH).map(lambda d: Raw("[" * d + "]" * d, True))
OBJECT_RAWS = st.integers(2, SAFE_DEPTH // 2).map(lambda d: Raw('{"a":' * d + "0" + "}" * d, True))
DECODABLE_RAWS = NUMBER_RAWS | ARRAY_RAWS | OBJECT_RAWS
# Not JSON at all, wherever they stand: the whole frame is invalid_json.
UNDECODABLE_RAWS = st.sampled_from(
    [
        Raw(text, False)
        for text in (
            "1e999999",
            "-1e999999",
            "NaN",
            "Infinity",
            "-Infinity",
            "01",
            "+1",
            ".5",
            "tru",
            "'x'",
            '"\\ud800"',  # an escaped lone surrogate
        )
    ]
)


def _wrong_type(*, nullable: bool) -> st.SearchStrategy[Any]:
    """Any JSON value a string field must refuse."""
    return (
        JSON_VALUES.filter(lambda v: not isinstance(v, str) and (v is not None or not nullable))
        | DECODABLE_RAWS
    )


def _chars(low: int, high: int) -> st.SearchStrategy[str]:
    """Strings of ``low..high`` characters, two UTF-8 bytes each or one."""
    return st.integers(low, high).flatmap(lambda n: st.sampled_from(["é" * n, "a" * n, "字" * n]))


VALID_SESSION_IDS = st.from_regex(SESSION_ID, fullmatch=True)
BAD_SESSION_IDS = st.sampled_from(
    [
        "",
        "a.b",
        "*",
        ">",
        "a.*",
        "a.>",
        "a b",
        " a",
        "a\x00b",
        "a\tb",
        "a\nb",
        "a\r",
        "a\x7f",
        "a\u200bb",
        "x" * 129,
        "sé",
        "$SYS",
        "yap.session.*.in.>",
        "a/b",
    ]
) | st.text(max_size=40).filter(lambda s: not SESSION_ID.fullmatch(s))


@dataclass(frozen=True)
class FieldSpec:
    good: st.SearchStrategy[Any]
    bad: st.SearchStrategy[tuple[Any, str]]
    required: bool = False


def _vocabulary(
    good: st.SearchStrategy[Any], is_valid: Callable[[str], bool], *, nullable: bool = True
) -> FieldSpec:
    return FieldSpec(
        good=(good | st.none()) if nullable else good,
        bad=st.tuples(
            st.text(max_size=20).filter(lambda s: not is_valid(s)), st.just("invalid_field")
        )
        | st.tuples(_wrong_type(nullable=True), st.just("invalid_field")),
    )


def _text_field(
    limit: int, *, nullable: bool, good: st.SearchStrategy[Any] | None = None
) -> FieldSpec:
    within = st.text(max_size=30) | _chars(0, limit)
    return FieldSpec(
        good=good if good is not None else ((within | st.none()) if nullable else within),
        bad=st.tuples(_chars(limit + 1, limit + 40), st.just("field_too_long"))
        | st.tuples(_wrong_type(nullable=nullable), st.just("invalid_field")),
    )


GENDERS = st.sampled_from(sorted(GENDER_ALIASES))
STYLES = st.sampled_from([*sorted(PERSONA_STYLES), "", "  ", " nerdy "])
IDENTITIES = st.sampled_from([*sorted(USER_IDENTITIES), "", " "])


def _gender_ok(s: str) -> bool:
    return s.strip().lower() in GENDER_ALIASES


def _style_ok(s: str) -> bool:
    return not s.strip() or s.strip() in PERSONA_STYLES


def _identity_ok(s: str) -> bool:
    return not s.strip() or s.strip() in USER_IDENTITIES


def _persona_fields(*, gender_nullable: bool) -> dict[str, FieldSpec]:
    return {
        "assistant_gender": _vocabulary(GENDERS, _gender_ok, nullable=gender_nullable),
        "persona_style": _vocabulary(STYLES, _style_ok),
        "user_identity": _vocabulary(IDENTITIES, _identity_ok),
        "persona_text": _text_field(PERSONA_LIMIT, nullable=True),
    }


FIELDS: dict[str, dict[str, FieldSpec]] = {
    "start": {
        "session_id": FieldSpec(
            good=VALID_SESSION_IDS,
            bad=st.tuples(BAD_SESSION_IDS, st.just("invalid_session_id"))
            | st.tuples(_wrong_type(nullable=False), st.just("invalid_field")),
            required=True,
        ),
        "user_utterance": FieldSpec(
            good=(st.text(max_size=30) | _chars(0, UTTERANCE_LIMIT - TAG_WIDTH - 1)).map(Tagged),
            bad=st.tuples(
                _chars(UTTERANCE_LIMIT + 1, UTTERANCE_LIMIT + 40), st.just("field_too_long")
            )
            | st.tuples(_wrong_type(nullable=False), st.just("invalid_field")),
            required=True,
        ),
        "history_text": _text_field(HISTORY_LIMIT, nullable=False),
        # Always sent on a start: a new session needs it (that rule is not fuzzed here).
        **_persona_fields(gender_nullable=False),
    },
    "cancel": {},
    "ping": {},
    "warm_persona": _persona_fields(gender_nullable=True),
    "warm_history": {"history_text": _text_field(HISTORY_LIMIT, nullable=False)},
    "set_persona": {
        "session_id": FieldSpec(
            good=VALID_SESSION_IDS | st.none(),
            bad=st.tuples(BAD_SESSION_IDS, st.just("invalid_session_id"))
            | st.tuples(_wrong_type(nullable=True), st.just("invalid_field")),
        ),
        **_persona_fields(gender_nullable=True),
    },
}
ALL_FIELDS = frozenset(name for fields in FIELDS.values() for name in fields) | {"type"}
VALID_ANSWER = {
    "start": Expect("turn"),
    "cancel": Expect("cancelled"),
    "ping": Expect("pong"),
    "warm_persona": Expect("warmed"),
    "warm_history": Expect("warmed"),
    "set_persona": Expect("persona_ack"),  # the connection always has a session here
}
ALWAYS_SENT = {("start", "assistant_gender")}


@st.composite
def messages(draw: st.DrawFn) -> Probe:
    """A valid message of some type, then zero or more mutations, each with its code."""
    kind = draw(st.sampled_from(["start", "start", "start", *sorted(VALID_ANSWER)]))
    fields = FIELDS[kind]
    message: dict[str, Any] = {"type": kind}
    for name, spec in fields.items():
        if spec.required or (kind, name) in ALWAYS_SENT or draw(st.booleans()):
            message[name] = draw(spec.good)
    codes: set[str] = set()
    for name in (
        draw(st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True)) if fields else []
    ):
        if (kind, name) not in ALWAYS_SENT and draw(st.integers(0, 3)) == 0:  # drop it
            message.pop(name, None)
            if fields[name].required:
                codes.add("missing_field")
        else:
            value, code = draw(fields[name].bad)
            message[name] = value
            codes.add(code)
    extras = draw(
        st.dictionaries(
            st.text(max_size=10).filter(lambda k: k not in ALL_FIELDS),
            JSON_VALUES | DECODABLE_RAWS,
            max_size=2,
        )
    )
    message.update(extras)
    label = f"{kind}:{'+'.join(sorted(codes)) or 'valid'}"
    type_change = draw(st.sampled_from([None] * 12 + ["drop", "null", "wrong_type", "unknown"]))
    type_code = None
    if type_change == "drop":
        del message["type"]
        type_code = "missing_field"
    elif type_change == "null":
        message["type"] = None
        type_code = "missing_field"
    elif type_change == "wrong_type":
        message["type"] = draw(_wrong_type(nullable=True))
        type_code = "unknown_message_type"
    elif type_change == "unknown":
        name = draw(
            st.sampled_from(["START", "Start", " start", "ping ", "pong", "stop", "", "end\x00"])
            | st.text(max_size=12)
        )
        message["type"] = name + "?" if name in MESSAGE_TYPES else name
        type_code = "unknown_message_type"
    if draw(st.integers(0, 15)) == 0:  # something that is not JSON, somewhere inside
        key = draw(st.sampled_from(sorted(set(message) - {"type"}) or ["junk"]))
        message[key] = draw(UNDECODABLE_RAWS)
        return Probe(message, _error("invalid_json"), f"{kind}:not_json")
    if type_code is not None:
        return Probe(message, _error(type_code), f"type:{type_change}")
    if codes:
        return Probe(message, _error(*codes), label)
    return Probe(message, VALID_ANSWER[kind], label)


def _classify_text(text: str) -> Expect | None:
    """What the protocol answers a text frame, judged by Python's json module."""
    try:
        value = json.loads(text)
    except ValueError:
        return _error("invalid_json")
    if isinstance(value, dict):
        return None  # a message: the messages() strategy covers those
    # Python accepts NaN and escaped lone surrogates; a strict decoder does not.
    return _error("invalid_message", "invalid_json")


binary_frames = (
    st.binary(max_size=64)
    | st.sampled_from(
        [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00", b'{"type":"ping"}']
    )
).map(lambda data: Probe(data, _error("invalid_message"), "binary"))

garbage_texts = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        [
            "",
            " ",
            "{",
            "}",
            "[",
            '{"type":',
            '{"type":"ping"',
            "{'type':'ping'}",
            '{"type":"ping",}',
        ]
    ),
    st.integers(1, SAFE_DEPTH).map(lambda d: "[" * d),
    st.integers(1, SAFE_DEPTH).map(lambda d: "{" * d),
    st.integers(1, SAFE_DEPTH).map(lambda d: '{"type":' * d),
).flatmap(
    lambda text: (
        st.nothing()
        if (expect := _classify_text(text)) is None
        else st.just(
            Probe(text, expect, "not_json" if "invalid_json" in expect.codes else "scalar")
        )
    )
)

non_objects = st.one_of(
    JSON_VALUES.filter(lambda v: not isinstance(v, dict)).map(json.dumps),
    (NUMBER_RAWS | ARRAY_RAWS).map(lambda raw: raw.text),
).map(lambda text: Probe(text, _error("invalid_message"), "non_object"))

undecodable = UNDECODABLE_RAWS.map(lambda raw: Probe(raw.text, _error("invalid_json"), "not_json"))


@st.composite
def truncated(draw: st.DrawFn) -> Probe:
    """A proper prefix of a message's JSON text is never JSON."""
    text = draw(messages()).render()
    assert isinstance(text, str)
    cut = draw(st.integers(0, len(text) - 1))
    return Probe(text[:cut], _error("invalid_json"), "truncated")


frames = st.one_of(
    messages(),
    messages(),
    messages(),
    messages(),
    binary_frames,
    garbage_texts,
    non_objects,
    undecodable,
    truncated(),
)


# --- talking to the edge ------------------------------------------------------------


async def _recv(ws: ClientConnection, within: float = 5.0) -> dict[str, Any]:
    frame = await recv_json(ws, within)
    text = json.dumps(frame)
    assert "Traceback" not in text and 'File "' not in text, frame
    if frame["type"] == "error":
        expected_keys = {"type", "error_code", "message"}
        if frame["error_code"] == "server_at_capacity":
            expected_keys.add("capacity")
        assert set(frame) == expected_keys, frame
        assert frame["error_code"] in KNOWN_CODES, frame
        assert isinstance(frame["message"], str) and frame["message"], frame
    return frame


def _is_turn_frame(frame: dict[str, Any]) -> bool:
    kind = frame["type"]
    return (
        (kind == "ack" and frame.get("for") == "start")
        or kind in TURN_FRAME_TYPES
        or (kind == "done" and "usage" in frame)
    )


def _check_turn(turn: list[dict[str, Any]], tag: str) -> None:
    types = [f["type"] for f in turn]
    assert types[0] == "ack" and types[1] == "toolcall", types
    assert types[-2:] == ["final", "done"], types
    assert set(types[2:-2]) <= {"token"}, types
    words = "".join(f["text"] for f in turn if f["type"] == "token").split()
    assert words[-1] == "end." and all(w.startswith(tag) for w in words[:-1]), (tag, words)
    assert turn[-2]["normalized_text"] == " ".join(words)
    assert turn[-1]["usage"]["completion_tokens"] > 0


def _batches(probes: list[Probe]) -> Iterator[list[Probe]]:
    """Runs of frames to pipeline: anything up to one valid start, then only frames that
    cannot touch a running turn (a cancel, start or set_persona waits for the next run)."""
    batch: list[Probe] = []
    in_turn = False
    for probe in probes:
        if (probe.expect.kind == "turn" and in_turn) or (
            in_turn and not probe.expect.harmless_mid_turn
        ):
            yield batch
            batch, in_turn = [], False
        batch.append(probe)
        in_turn = in_turn or probe.expect.kind == "turn"
    if batch:
        yield batch


async def _exchange(ws: ClientConnection, batch: list[Probe], tags: Iterator[str]) -> None:
    tag = None
    for probe in batch:
        if probe.expect.kind == "turn":
            tag = next(tags)
        await ws.send(probe.render(tag or "t00000"))
    ordered = [p for p in batch if p.expect.ordered]
    warms = sum(p.expect.kind == "warmed" for p in batch)
    answers: list[dict[str, Any]] = []
    turn: list[dict[str, Any]] = []
    warmed = 0

    def turn_over() -> bool:
        return tag is None or (bool(turn) and turn[-1]["type"] == "done")

    while len(answers) < len(ordered) or warmed < warms or not turn_over():
        try:
            frame = await _recv(ws)
        except TimeoutError:
            raise AssertionError(
                f"no answer within 5 s: sent {batch}, got {answers} + {warmed} warmed + {turn}"
            ) from None
        if frame["type"] == "warmed":
            warmed += 1
        elif _is_turn_frame(frame):
            assert tag is not None, ("a turn frame nobody asked for", frame, batch)
            turn.append(frame)
        else:
            answers.append(frame)
    assert warmed == warms
    for probe, frame in zip(ordered, answers, strict=True):
        expect = probe.expect
        if expect.kind == "error":
            assert frame["type"] == "error" and frame["error_code"] in expect.codes, (probe, frame)
        elif expect.kind == "pong":
            assert frame == {"type": "pong"}, (probe, frame)
        elif expect.kind == "cancelled":
            assert frame == {"type": "done", "cancelled": True}, (probe, frame)
        else:
            assert frame["type"] == "ack" and frame["for"] == "set_persona", (probe, frame)
    if tag is not None:
        _check_turn(turn, tag)


async def _valid_turn(ws: ClientConnection, tag: str) -> None:
    await ws.send(start_message("fuzz-" + uuid.uuid4().hex[:8], f"{tag} still there?"))
    _check_turn(await read_turn(ws), tag)


@pytest.fixture
def tally() -> Iterator[Counter[str]]:
    """Frames sent across all of a test's examples; there must be thousands."""
    counts: Counter[str] = Counter()
    yield counts
    print(
        f"\nfuzz: {counts['frames']} frames in {counts['examples']} examples, "
        f"{counts['turn']} valid turns; by kind: "
        + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()) if k.startswith("kind:"))
    )
    assert counts["frames"] >= 2000


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(probes=st.lists(frames, min_size=60, max_size=110))
async def test_every_frame_gets_one_stable_answer(
    nats_server, caplog: pytest.LogCaptureFixture, tally: Counter[str], probes: list[Probe]
) -> None:
    """Each random or mutated frame gets exactly one well-formed answer, and the
    connection, the edge and a fresh connection keep working afterwards."""
    caplog.clear()
    caplog.set_level(logging.WARNING)
    tags = (f"t{n:05d}" for n in itertools.count(1))
    async with run_stack(_fuzz_config(nats_server.url)) as stack, stack.client() as ws:
        await _valid_turn(ws, next(tags))  # the connection has a session from here on
        for batch in _batches(probes):
            await _exchange(ws, batch, tags)
        await ws.send(json.dumps({"type": "ping"}))
        assert await _recv(ws) == {"type": "pong"}  # nothing was left queued
        await _valid_turn(ws, next(tags))
        async with stack.client() as fresh:
            await _valid_turn(fresh, next(tags))
        await stack.wait_idle()
        assert stack.running_requests() == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    tally["examples"] += 1
    tally["frames"] += len(probes)
    tally["turn"] += sum(p.expect.kind == "turn" for p in probes)
    tally.update(f"kind:{p.label.split(':')[0]}" for p in probes)


# --- regressions found by fuzzing ---------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        "[" * 10_000,
        "[" * 10_000 + "]" * 10_000,
        '{"type":"start","session_id":' + "[" * 5_000,
    ],
    ids=["open", "balanced", "in_a_field"],
)
async def test_deep_nesting_is_invalid_json(
    nats_server, caplog: pytest.LogCaptureFixture, payload: str
) -> None:
    """JSON nested 5,000 to 10,000 deep answers invalid_json and the connection stays open."""
    async with run_stack(_fuzz_config(nats_server.url)) as stack, stack.client() as ws:
        await ws.send(payload)
        frame = await _recv(ws)
        assert frame["type"] == "error" and frame["error_code"] == "invalid_json"
        await ws.send(json.dumps({"type": "ping"}))
        assert await _recv(ws) == {"type": "pong"}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_set_persona_for_another_session_mid_turn_keeps_the_turn(nats_server) -> None:
    """A set_persona naming another session during a turn still lets that turn end in a done."""
    config = make_config(
        nats_server.url, edge={"shutdown_timeout_s": 0.5}, chat={"bench_tokens_per_s": 400}
    )
    async with run_stack(config) as stack, stack.client() as ws:
        await ws.send(start_message("first", "t1 [[long]] story"))
        assert (await recv_json(ws))["type"] == "ack"
        await ws.send(json.dumps({"type": "set_persona", "session_id": "second"}))
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["type"] != "done":
            frames.append(await recv_json(ws, within=3.0))  # the long turn takes ~1 s
        await stack.wait_idle()
    assert "error_code" not in frames[-1]


@pytest.mark.parametrize("data", [b"\xff", b'{"type":"ping","x":"\xc3\x28"}', b"\xed\xa0\x80"])
async def test_invalid_utf8_text_frame_closes_1007(nats_server, data: bytes) -> None:
    """A text frame that is not UTF-8 closes the connection with 1007 (RFC 6455), with no
    error frame before it; the edge goes on serving other connections."""
    from websockets.exceptions import ConnectionClosed

    async with run_stack(_fuzz_config(nats_server.url)) as stack:
        async with stack.client() as ws:
            await ws.send(data, text=True)
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
        async with stack.client() as fresh:
            await _valid_turn(fresh, "t00001")
