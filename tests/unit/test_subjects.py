"""Subject strings, session-id validation and wildcard coverage; no I/O."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bus import subjects
from bus.subjects import InvalidSessionId, validate_session_id


def nats_match(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is exactly one token, a final ``>`` one or more."""
    pattern_tokens = pattern.split(".")
    subject_tokens = subject.split(".")
    for index, token in enumerate(pattern_tokens):
        if token == ">":
            return index == len(pattern_tokens) - 1 and len(subject_tokens) > index
        if index >= len(subject_tokens):
            return False
        if token != "*" and token != subject_tokens[index]:
            return False
    return len(pattern_tokens) == len(subject_tokens)


def test_matcher_star_is_one_token_and_gt_is_the_rest() -> None:
    """The test's own matcher follows NATS rules, so the coverage tests below mean something."""
    assert nats_match("a.*.c", "a.b.c")
    assert not nats_match("a.*.c", "a.b.x.c")
    assert not nats_match("a.*", "a")
    assert nats_match("a.>", "a.b")
    assert nats_match("a.>", "a.b.c.d")
    assert not nats_match("a.>", "a")
    assert not nats_match("a.b", "a.b.c")


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (subjects.tool_start, "yap.session.S-1.in.tool.start"),
        (subjects.chat_start, "yap.session.S-1.in.chat.start"),
        (subjects.chat_warm, "yap.session.S-1.in.chat.warm"),
        (subjects.cancel, "yap.session.S-1.in.cancel"),
        (subjects.session_out, "yap.session.S-1.out.>"),
    ],
)
def test_session_subjects(build: Callable[[str], str], expected: str) -> None:
    """Each inbound builder puts the session id in the third token under the ``yap`` prefix."""
    assert build("S-1") == expected


@pytest.mark.parametrize("kind", ["toolcall", "token", "done", "error", "warmed"])
def test_out_subject_per_kind(kind: subjects.OutKind) -> None:
    """Outbound subjects end in the event kind after ``out``."""
    assert subjects.out("abc", kind) == f"yap.session.abc.out.{kind}"


@pytest.mark.parametrize("kind", ["tool", "chat"])
def test_heartbeat_subject(kind: subjects.ActorKind) -> None:
    """Heartbeats are keyed by actor kind and id."""
    assert subjects.heartbeat(kind, "actor_7") == f"yap.actor.{kind}.actor_7.heartbeat"


def test_heartbeat_rejects_unsafe_actor_id() -> None:
    """An actor id is validated like a session id before it becomes a token."""
    with pytest.raises(InvalidSessionId):
        subjects.heartbeat("tool", "a.b")


def test_queue_groups_are_distinct() -> None:
    """Tool and chat actors load-balance in separate queue groups."""
    assert subjects.QUEUE_TOOL != subjects.QUEUE_CHAT
    assert subjects.PREFIX == "yap"


@pytest.mark.parametrize(
    "session_id",
    ["a", "Z", "0", "_", "-", "abc-DEF_123", "x" * 128, "550e8400-e29b-41d4-a716-446655440000"],
)
def test_valid_session_ids(session_id: str) -> None:
    """Ids of 1-128 characters from ``[A-Za-z0-9_-]`` are returned unchanged."""
    assert validate_session_id(session_id) == session_id


@pytest.mark.parametrize(
    "session_id",
    [
        "",
        "a.b",
        ".",
        "*",
        "a*",
        ">",
        "a.>",
        "a b",
        " a",
        "a\t",
        "a\n",
        "x" * 129,
        "café",
        "\uff41",  # fullwidth a
        "\u0663",  # Arabic-Indic digit three
        "a/b",
        "a$b",
    ],
)
def test_invalid_session_ids(session_id: str) -> None:
    """Anything outside ``[A-Za-z0-9_-]{1,128}`` raises InvalidSessionId."""
    with pytest.raises(InvalidSessionId):
        validate_session_id(session_id)


@pytest.mark.parametrize(
    "build",
    [
        subjects.tool_start,
        subjects.chat_start,
        subjects.chat_warm,
        subjects.cancel,
        subjects.session_out,
        lambda s: subjects.out(s, "token"),
    ],
)
def test_builders_validate_session_id(build: Callable[[str], str]) -> None:
    """No builder lets a wildcard session id reach a subject."""
    with pytest.raises(InvalidSessionId):
        build("*")


def test_invalid_session_id_is_a_value_error() -> None:
    """Callers catching ValueError also catch a bad session id."""
    assert issubclass(InvalidSessionId, ValueError)


WILDCARDS: list[tuple[Callable[[], str], Callable[[str], str]]] = [
    (subjects.all_tool_starts, subjects.tool_start),
    (subjects.all_chat_starts, subjects.chat_start),
    (subjects.all_chat_warms, subjects.chat_warm),
    (subjects.all_cancels, subjects.cancel),
]


@pytest.mark.parametrize(("wildcard", "build"), WILDCARDS)
@pytest.mark.parametrize("session_id", ["a", "s-1_X", "x" * 128])
def test_wildcards_match_their_builder(
    wildcard: Callable[[], str], build: Callable[[str], str], session_id: str
) -> None:
    """Each actor wildcard subscription matches what its builder produces for any session."""
    assert nats_match(wildcard(), build(session_id))


@pytest.mark.parametrize(("wildcard", "own"), WILDCARDS)
def test_wildcards_do_not_overlap(wildcard: Callable[[], str], own: Callable[[str], str]) -> None:
    """An actor wildcard matches no other inbound kind and no outbound subject."""
    others = [build("s") for _, build in WILDCARDS if build is not own]
    others += [subjects.out("s", kind) for kind in ("toolcall", "token", "done", "error", "warmed")]
    assert not any(nats_match(wildcard(), subject) for subject in others)


@pytest.mark.parametrize("kind", ["toolcall", "token", "done", "error", "warmed"])
def test_session_out_matches_every_out_kind(kind: subjects.OutKind) -> None:
    """An edge's per-session subscription sees every outbound kind of that session only."""
    assert nats_match(subjects.session_out("s1"), subjects.out("s1", kind))
    assert not nats_match(subjects.session_out("s1"), subjects.out("s2", kind))


def test_session_out_does_not_match_inbound() -> None:
    """An edge never receives the starts and cancels it publishes itself."""
    inbound = [build("s1") for _, build in WILDCARDS]
    assert not any(nats_match(subjects.session_out("s1"), subject) for subject in inbound)


@pytest.mark.parametrize("kind", ["tool", "chat"])
def test_all_heartbeats_matches_heartbeat(kind: subjects.ActorKind) -> None:
    """The edge's heartbeat subscription covers every actor of both kinds."""
    assert nats_match(subjects.ALL_HEARTBEATS, subjects.heartbeat(kind, "a1"))
    assert not nats_match(subjects.ALL_HEARTBEATS, subjects.out("a1", "done"))
