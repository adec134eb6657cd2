"""The routing policy and the edge's load book, without sockets."""

from __future__ import annotations

import random

import pytest

from bus.events import Heartbeat
from edge.routing import ActorLoad, AllFull, AnyActor, LoadBook, ToActor, pick


def _load(actor_id: str, turns: int, limit: int = 2, refused: bool = False) -> ActorLoad:
    return ActorLoad(actor_id, turns, limit, refused)


def _beat(actor_id: str, turns: int, limit: int = 2) -> Heartbeat:
    return Heartbeat(actor_id=actor_id, kind="chat", interval_s=0.25, turns=turns, limit=limit)


@pytest.fixture
def rng() -> random.Random:
    return random.Random(7)


def test_home_with_room_wins_over_an_idler_actor(rng: random.Random) -> None:
    """The session's home keeps the leg while it has room, even when another is idle."""
    loads = [_load("chat-0", 0), _load("chat-1", 1)]
    assert pick(loads, "chat-1", rng) == ToActor("chat-1")


def test_full_home_falls_back_to_the_least_loaded(rng: random.Random) -> None:
    """A full home sends the leg to the least-loaded actor with room."""
    loads = [_load("chat-0", 2), _load("chat-1", 1, limit=4), _load("chat-2", 3, limit=4)]
    assert pick(loads, "chat-0", rng) == ToActor("chat-1")


def test_dead_home_falls_back_to_the_least_loaded(rng: random.Random) -> None:
    """A home that is not among the live actors is ignored."""
    loads = [_load("chat-0", 1), _load("chat-1", 0)]
    assert pick(loads, "chat-9", rng) == ToActor("chat-1")


def test_every_actor_full_is_all_full(rng: random.Random) -> None:
    """No actor with room: the leg cannot be placed."""
    loads = [_load("chat-0", 2), _load("chat-1", 1, refused=True)]
    assert pick(loads, "chat-1", rng) == AllFull()


def test_no_live_actor_leaves_it_to_the_queue_group(rng: random.Random) -> None:
    """With nothing heard from, the queue group decides (and says if none runs)."""
    assert pick([], "chat-0", rng) == AnyActor()


def test_an_actor_without_a_limit_is_never_full(rng: random.Random) -> None:
    """An older actor's heartbeat carries no limit: any count of turns fits."""
    assert pick([_load("chat-0", 500, limit=0)], None, rng) == ToActor("chat-0")


def test_ties_are_spread_at_random() -> None:
    """Equally loaded actors both get picked, so edges do not herd onto one."""
    loads = [_load("chat-0", 0), _load("chat-1", 0), _load("chat-2", 1)]
    rng = random.Random(1)
    picks = {pick(loads, None, rng) for _ in range(50)}
    assert picks == {ToActor("chat-0"), ToActor("chat-1")}


def test_book_counts_placements_until_the_next_heartbeat() -> None:
    """Legs placed since a heartbeat add to its count; the next heartbeat replaces them."""
    book = LoadBook()
    book.placed("chat-0")
    book.placed("chat-0")
    assert book.loads([_beat("chat-0", 0)]) == [ActorLoad("chat-0", 2, 2)]
    assert book.loads([_beat("chat-0", 0)])[0].full
    book.heard("chat-0")
    assert book.loads([_beat("chat-0", 1)]) == [ActorLoad("chat-0", 1, 2)]


def test_book_ends_free_a_place_and_never_go_negative() -> None:
    """A leg's end frees its place before the heartbeat says so, never below zero."""
    book = LoadBook()
    book.ended("chat-0")
    assert book.loads([_beat("chat-0", 2)]) == [ActorLoad("chat-0", 1, 2)]
    book.ended("chat-0")
    book.ended("chat-0")
    assert book.loads([_beat("chat-0", 2)])[0].turns == 0


def test_book_believes_a_refusal_until_the_next_heartbeat() -> None:
    """An actor that refused as busy is full whatever its beat said, until it beats again."""
    book = LoadBook()
    book.refused("chat-0")
    assert book.loads([_beat("chat-0", 0)])[0].full
    assert book.loads([_beat("chat-0", 0, limit=0)])[0].full
    book.heard("chat-0")
    assert not book.loads([_beat("chat-0", 0)])[0].full


def test_the_book_drops_what_it_knew_of_actors_no_longer_live() -> None:
    """An actor that left the live set takes its corrections with it, so the book is
    bounded by the live actors; back, it counts from its heartbeat alone."""
    book = LoadBook()
    book.placed("chat-0")
    book.refused("chat-0")
    book.placed("chat-1")
    assert book.loads([_beat("chat-1", 0)]) == [ActorLoad("chat-1", 1, 2)]
    assert book.loads([_beat("chat-0", 0), _beat("chat-1", 0)]) == [
        ActorLoad("chat-0", 0, 2),
        ActorLoad("chat-1", 1, 2),
    ]
