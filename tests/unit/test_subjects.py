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
    ],
)
def test_session_subjects(build: Callable[[str], str], expected: str) -> None:
    """Each inbound builder puts the session id in the third token under the ``yap`` prefix."""
    assert build("S-1") == expected


OUT_KINDS = ["toolcall", "token", "done", "error", "warmed"]


def _out(session_id: str, kind: subjects.OutKind = "token", edge: str = "e1", actor: str = "a1"):
    return subjects.edge_out(edge, session_id, actor, kind)


@pytest.mark.parametrize("kind", OUT_KINDS)
def test_out_subject_per_kind(kind: subjects.OutKind) -> None:
    """Outbound subjects name the edge, the session, the sending actor, then the kind."""
    assert (
        subjects.edge_out("edge-0", "abc", "chat-1", kind)
        == f"yap.edge.edge-0.session.abc.out.chat-1.{kind}"
    )


@pytest.mark.parametrize("kind", OUT_KINDS)
def test_parse_edge_out_inverts_edge_out(kind: subjects.OutKind) -> None:
    """parse_edge_out gives back the session, the sender and the kind."""
    assert subjects.parse_edge_out(_out("s-1", kind, actor="tool-0")) == ("s-1", "tool-0", kind)


@pytest.mark.parametrize(
    "subject",
    [
        "yap.edge.e1.session.s1.out.a1",
        "yap.edge.e1.session.s1.out.a1.token.x",
        "yap.edge.e1.sessions.s1.out.a1.token",
        "yap.edge.e1.session.s1.in.a1.token",
        "yap.edge.e1.session.s1.out.a1.nonsense",
        "yap.edge.e1.stats",
        "",
    ],
)
def test_parse_edge_out_refuses_other_subjects(subject: str) -> None:
    """A subject not shaped like an outbound one parses to None."""
    assert subjects.parse_edge_out(subject) is None


def test_edge_outbox_is_the_edges_own() -> None:
    """An edge's one subscription sees its own sessions from any actor, not another edge's."""
    outbox = subjects.edge_outbox("e1")
    for kind in OUT_KINDS:
        assert nats_match(outbox, _out("s1", kind, edge="e1", actor="chat-3"))  # type: ignore[arg-type]
        assert not nats_match(outbox, _out("s1", kind, edge="e2"))  # type: ignore[arg-type]
    assert not nats_match(outbox, subjects.edge_stats("e1"))
    assert all(nats_match(subjects.all_out(), _out("s", edge=e)) for e in ("e1", "e2"))


def test_all_out_of_one_kind_is_that_kind_from_any_edge_and_actor() -> None:
    """all_out("done") sees every edge's done events from every actor, and nothing else."""
    done = subjects.all_out("done")
    assert nats_match(done, _out("s1", "done", edge="e1", actor="chat-1"))
    assert nats_match(done, _out("s2", "done", edge="e2", actor="tool-0"))
    assert not nats_match(done, _out("s1", "token", edge="e1", actor="chat-1"))
    assert all(nats_match(subjects.all_out(), _out("s1", "done", edge=e)) for e in ("e1", "e2"))


def test_out_from_covers_only_the_actors_own_subjects() -> None:
    """An actor's publish permission matches its own outbound subjects on any edge only."""
    own = subjects.out_from("chat-0")
    assert nats_match(own, _out("s1", "token", edge="e9", actor="chat-0"))
    assert not nats_match(own, _out("s1", "token", actor="chat-1"))
    assert not nats_match(own, subjects.tool_start("s1"))


def test_inbox_prefix_is_per_identity() -> None:
    """Each process's inbox prefix sits under _INBOX and names it."""
    assert subjects.inbox_prefix("edge-0") == "_INBOX.edge-0"
    with pytest.raises(InvalidSessionId):
        subjects.inbox_prefix("a.b")


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
        lambda s: _out(s),
        lambda s: _out("s", edge=s),
        lambda s: _out("s", actor=s),
        subjects.edge_outbox,
        subjects.out_from,
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
    others += [_out("s", kind) for kind in OUT_KINDS]  # type: ignore[arg-type]
    assert not any(nats_match(wildcard(), subject) for subject in others)


def test_edge_outbox_does_not_match_inbound() -> None:
    """An edge never receives the starts and cancels it publishes itself."""
    inbound = [build("s1") for _, build in WILDCARDS]
    assert not any(nats_match(subjects.edge_outbox("e1"), subject) for subject in inbound)


@pytest.mark.parametrize("kind", ["tool", "chat"])
def test_all_heartbeats_matches_heartbeat(kind: subjects.ActorKind) -> None:
    """The edge's heartbeat subscription covers every actor of both kinds."""
    assert nats_match(subjects.ALL_HEARTBEATS, subjects.heartbeat(kind, "a1"))
    assert not nats_match(subjects.ALL_HEARTBEATS, _out("a1", "done"))
