"""Which actor gets a turn's leg, from the actors' loads: the routing policy, without I/O.

``pick`` places a leg: on the session's home actor (the chat actor that holds its
prefix cache) while it is live and has room, else on the least-loaded live actor
with room, else nowhere (every actor is full: the turn waits, ``edge.admission``).

Loads come from heartbeats, which lag: an actor beats every 250 ms, and the
starts this edge sent since then are not in it yet. ``LoadBook`` corrects each
actor's last heartbeat with what this edge did since (legs it placed there, legs
that ended there, a refusal that said "full"), and drops the correction when the
next heartbeat comes, which counts all of it. What other edges did meanwhile is
not known here; the actor still refuses past its ``max_running``, and the edge
takes that refusal as "full until your next heartbeat" and places the leg again.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bus.events import Heartbeat

__all__ = ["ActorLoad", "AllFull", "AnyActor", "LoadBook", "Placement", "ToActor", "pick"]


@dataclass(frozen=True, slots=True)
class ActorLoad:
    """One live actor as the policy sees it."""

    actor_id: str
    turns: int
    limit: int  # 0: the actor does not say (an older one), never full by count
    refused: bool = False  # it said it is full since its last heartbeat

    @property
    def full(self) -> bool:
        return self.refused or (self.limit > 0 and self.turns >= self.limit)


@dataclass(frozen=True, slots=True)
class ToActor:
    """Place the leg on ``actor_id``."""

    actor_id: str


@dataclass(frozen=True, slots=True)
class AnyActor:
    """No actor of the kind has been heard from: let the queue group find one (or
    say that none runs, as "no responders")."""


@dataclass(frozen=True, slots=True)
class AllFull:
    """Every live actor of the kind is at its limit."""


Placement = ToActor | AnyActor | AllFull


def pick(loads: Sequence[ActorLoad], home: str | None, rng: random.Random) -> Placement:
    """Where a leg goes, given the live actors of its kind and the session's home.

    Least-loaded counts turns, not turns per limit: replicas of a kind share one
    ``max_running``. Ties are broken at random (``rng``), not by id: several edges
    see the same heartbeats, and a fixed order would send all of their new
    sessions to the same idle actor until its next beat.
    """
    if not loads:
        return AnyActor()
    free = [load for load in loads if not load.full]
    if not free:
        return AllFull()
    if home is not None and any(load.actor_id == home for load in free):
        return ToActor(home)
    least = min(load.turns for load in free)
    tied = sorted(load.actor_id for load in free if load.turns == least)
    return ToActor(tied[0] if len(tied) == 1 else rng.choice(tied))


class LoadBook:
    """Each actor's heartbeat load, corrected by what this edge did since that beat;
    one book per actor kind.

    Keyed by actor id; an entry lives from the edge's first act on an actor to that
    actor's next heartbeat, or until the actor is no longer live (``loads`` drops
    it): the book holds at most the live actors. An actor that comes back counts
    from its next heartbeat, which holds everything this edge did.
    """

    def __init__(self) -> None:
        self._since: dict[str, int] = {}  # legs placed minus legs ended, since the beat
        self._refused: set[str] = set()

    def heard(self, actor_id: str) -> None:
        """A heartbeat came: it counts everything this edge did before it."""
        self._since.pop(actor_id, None)
        self._refused.discard(actor_id)

    def placed(self, actor_id: str) -> None:
        self._since[actor_id] = self._since.get(actor_id, 0) + 1

    def ended(self, actor_id: str) -> None:
        """A leg on ``actor_id`` ended (its ``Done``), or a placement there was undone."""
        self._since[actor_id] = self._since.get(actor_id, 0) - 1

    def refused(self, actor_id: str) -> None:
        """The actor refused a start as busy: believe it over its last heartbeat."""
        self._refused.add(actor_id)

    def loads(self, beats: Iterable[Heartbeat]) -> list[ActorLoad]:
        """The live actors' loads (``beats``: their last heartbeats); the corrections
        of actors not among them are dropped."""
        loads = [
            ActorLoad(
                beat.actor_id,
                max(0, beat.turns + self._since.get(beat.actor_id, 0)),
                beat.limit,
                beat.actor_id in self._refused,
            )
            for beat in beats
        ]
        live = {load.actor_id for load in loads}
        for gone in self._since.keys() - live:
            del self._since[gone]
        self._refused &= live
        return loads
