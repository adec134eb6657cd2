"""The recording stream's filters, records and redaction hook; no I/O."""

from __future__ import annotations

import pytest

from bus import subjects
from bus.events import ChatStart, Persona, ToolStart, Warm
from bus.recording import (
    ClientFrame,
    EdgeError,
    LegStarted,
    RecordCodec,
    RecordDecodeError,
    SessionSnapshot,
    TurnEnded,
    TurnStarted,
    blank,
    config_hash,
    load_redactor,
    redact_event,
    redact_fields,
    stream_config,
)
from configs.schema import Config, RecordingConfig
from tests.unit.test_subjects import nats_match

SID = "sess-1"
RECORDED = [
    subjects.tool_start(SID),
    subjects.chat_start(SID),
    subjects.chat_start_at(SID, "chat-0"),
    subjects.chat_warm(SID),
    subjects.chat_warm_at(SID, "chat-1"),
    subjects.cancel(SID),
    *(subjects.edge_out("edge-0", SID, "chat-0", kind) for kind in sorted(subjects.OUT_KINDS)),
    subjects.edge_out("edge-1", SID, "tool-0", "toolcall"),
    subjects.client(SID),
]
NOT_RECORDED = [
    subjects.heartbeat("tool", "tool-0"),
    subjects.heartbeat("chat", "chat-0"),
    subjects.edge_stats("edge-0"),
]


def _matched(subject: str, filters: tuple[str, ...]) -> list[str]:
    return [f for f in filters if nats_match(f, subject)]


@pytest.mark.parametrize("subject", RECORDED)
def test_every_session_subject_is_recorded_once(subject: str) -> None:
    """Each inbound, outbound and client subject matches exactly one stream filter."""
    assert len(_matched(subject, subjects.recording_subjects())) == 1


@pytest.mark.parametrize("subject", NOT_RECORDED)
def test_heartbeats_and_stats_stay_out(subject: str) -> None:
    """Liveness traffic matches no filter of the stream."""
    assert _matched(subject, subjects.recording_subjects()) == []
    assert _matched(subject, subjects.recording_subjects(redact=True)) == []


def test_redaction_leaves_the_text_bearing_starts_out() -> None:
    """Redacting, the stream takes cancels, outbound and client subjects, not starts or warms."""
    filters = subjects.recording_subjects(redact=True)
    for subject in (subjects.tool_start(SID), subjects.chat_start(SID), subjects.chat_warm(SID)):
        assert _matched(subject, filters) == []
    token = subjects.edge_out("edge-0", SID, "chat-0", "token")
    for subject in (subjects.cancel(SID), token, subjects.client(SID)):
        assert len(_matched(subject, filters)) == 1


def test_session_filters_cover_its_subjects_only() -> None:
    """A session's consumer filters match all its subjects and none of another session."""
    filters = subjects.session_recording(SID)
    assert all(_matched(subject, filters) for subject in RECORDED)
    assert not _matched(subjects.tool_start("other"), filters)
    assert not _matched(subjects.client("other"), filters)
    assert not _matched(subjects.edge_out("edge-0", "other", "chat-0", "token"), filters)


def test_stream_filters_are_the_subject_builders() -> None:
    """The stream takes every edge's outbound subjects through ``all_out()``, and no two
    of its filters overlap (JetStream refuses a stream whose subjects do)."""
    filters = subjects.recording_subjects()
    assert subjects.all_out() in filters
    assert subjects.all_clients() in filters and subjects.all_imported() in filters
    probes = [*RECORDED, subjects.imported(subjects.tool_start(SID))]
    for subject in probes:
        assert len(_matched(subject, filters)) == 1, subject


@pytest.mark.parametrize("subject", RECORDED)
def test_parse_recorded_reads_back_the_session(subject: str) -> None:
    """Every recorded subject parses back to its session id and a direction."""
    parsed = subjects.parse_recorded(subject)
    assert parsed is not None and parsed.session_id == SID
    assert parsed.direction in ("in", "out", "client")


def test_parse_recorded_kinds_and_actor() -> None:
    """The kind and the addressed actor come back from the subject."""
    parsed = subjects.parse_recorded(subjects.chat_start_at(SID, "chat-3"))
    assert parsed == subjects.RecordedSubject(SID, "in", "chat.start", "chat-3")
    out = subjects.parse_recorded(subjects.edge_out("edge-2", SID, "chat-1", "done"))
    assert out == subjects.RecordedSubject(SID, "out", "done", "chat-1", "edge-2")
    assert subjects.parse_recorded(subjects.heartbeat("tool", "t")) is None
    assert subjects.parse_recorded(subjects.edge_stats("edge-0")) is None
    # Subjects from a file are checked token by token: no wildcard passes for an id.
    assert subjects.parse_recorded("yap.edge.*.session.s.out.chat-0.token") is None
    assert subjects.parse_recorded("yap.session.s.in.chat.start.>") is None


def test_imported_subjects_are_transformed_back() -> None:
    """An imported subject sits under a prefix the transform strips again."""
    source, destination = subjects.recording_transform()
    imported = subjects.imported(subjects.tool_start(SID))
    assert nats_match(source, imported) and destination == ">"
    assert imported.endswith(subjects.tool_start(SID))
    assert not _matched(imported, subjects.recording_subjects()[:-1])  # only the import filter


def test_stream_config_is_no_ack_file_and_bounded() -> None:
    """The stream never answers publishes, lives on disk and drops the oldest first."""
    config = stream_config(RecordingConfig(enabled=True, max_age_s=60, max_bytes=1000))
    assert config.no_ack is True
    assert config.storage is not None and config.storage.value == "file"
    assert config.discard is not None and config.discard.value == "old"
    assert (config.max_age, config.max_bytes) == (60, 1000)
    paused = stream_config(RecordingConfig(), enabled=False)
    assert paused.subjects == [subjects.all_imported()]


@pytest.mark.parametrize(
    "record",
    [
        ClientFrame(conn="c", at_ns=1, text='{"type":"ping"}', size=15),
        ClientFrame(conn="c", at_ns=2, binary=True, size=9),
        EdgeError(conn="c", at_ns=3, code="invalid_json"),
        TurnStarted(conn="c", at_ns=4, turn_id="t", settings=SessionSnapshot(seed=7, now="x")),
        TurnEnded(conn="c", at_ns=5, turn_id="t", outcome="failed", error_code="actor_lost"),
        LegStarted(conn="c", at_ns=6, kind="tool", event=b"\x93"),
    ],
)
def test_records_round_trip(record: object) -> None:
    """Every record kind decodes to what was encoded."""
    codec = RecordCodec()
    assert codec.decode(codec.encode(record)) == record  # type: ignore[arg-type]


def test_record_decode_error() -> None:
    """A payload that is no record raises RecordDecodeError."""
    with pytest.raises(RecordDecodeError):
        RecordCodec().decode(b"\x01\x02")


def test_blank_keeps_the_length() -> None:
    """The built-in hook blanks text to as many underscores."""
    assert blank("user_utterance", "héllo wörld") == "_" * 11


def test_load_redactor() -> None:
    """'' is no hook, 'blank' the built-in, module:function any callable; others fail."""
    assert load_redactor("") is None
    assert load_redactor("blank") is blank
    assert load_redactor("bus.recording:blank") is blank
    for bad in ("nonsense", "no.such.module:f", "bus.recording:nothing", "bus.recording:STREAM"):
        with pytest.raises(ValueError):
            load_redactor(bad)


def test_redact_fields_and_events_keep_ids_and_lengths() -> None:
    """Redaction blanks utterance, history and persona text; ids, lengths and the rest stay."""
    message = {"type": "start", "session_id": "s", "user_utterance": "secret", "history_text": "h"}
    assert redact_fields(message, blank) == {
        **message,
        "user_utterance": "______",
        "history_text": "_",
    }
    persona = Persona(persona_text="my persona", now="clock")
    chat = redact_event(ChatStart("s", "t", "secret words", persona, "past", seed=3), blank)
    assert (chat.session_id, chat.turn_id, chat.seed) == ("s", "t", 3)
    assert (chat.user_utterance, chat.history_text) == ("_" * 12, "____")
    assert chat.persona.persona_text == "_" * 10 and chat.persona.now == "clock"
    tool = redact_event(ToolStart("s", "t", "secret", "past"), blank)
    assert tool.user_utterance == "______"
    warm = redact_event(Warm("s", "w", "history", persona, "old talk"), blank)
    assert warm.history_text == "________"


def test_config_hash_ignores_secrets_and_sees_settings() -> None:
    """Two deployments differing only in keys hash alike; a changed setting does not."""
    base = Config()
    keyed = Config(edge=base.edge.__class__(api_key="other"))
    assert config_hash(base) == config_hash(keyed)
    longer = Config(chat=base.chat.__class__(max_out=99))
    assert config_hash(base) != config_hash(longer)
