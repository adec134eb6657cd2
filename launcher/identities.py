"""Who each process is on the bus: its id, its NATS user and password.

One function, :func:`process_env`, turns an identity and its credentials into the
environment variables that process gets (``YAP_ACTOR_ID`` / ``YAP_EDGE_ID``,
``YAP_BUS_USER``, ``YAP_BUS_PASSWORD``); :func:`bus_authorization` makes the
credentials of every identity of a run and the nats-server ``authorization`` block
that admits them: one user per id, with the permissions ``bus/permissions.py``
builds from that id, and any other roles a run asks for (a benchmark's listener).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from bus.permissions import (
    OBSERVER,
    REPLAY,
    Role,
    actor_role,
    authorization_config,
    edge_role,
    new_passwords,
    observer_role,
    replay_role,
)
from launcher.plan import Plan

__all__ = [
    "BusCredentials",
    "Identity",
    "bus_authorization",
    "identities",
    "process_env",
]

IdentityRole = Literal["edge", "actor", "observer", "replay"]


@dataclass(frozen=True, slots=True)
class Identity:
    """A process's role and id (``actor``, ``chat-1``); the observer is ``just status``,
    the replay user ``python -m replay`` (which reads the session recordings)."""

    role: IdentityRole
    id: str


@dataclass(frozen=True, slots=True)
class BusCredentials:
    user: str
    password: str


def identities(plan: Plan) -> tuple[Identity, ...]:
    """Every identity of a run: each actor slot, each edge slot, the observer and
    the replay user."""
    return (
        *(Identity("actor", slot.name) for slot in plan.actors),
        *(Identity("edge", slot.name) for slot in plan.edges),
        Identity("observer", OBSERVER),
        Identity("replay", REPLAY),
    )


def bus_authorization(
    ids: Iterable[Identity], extra_roles: Iterable[Role] = ()
) -> tuple[str, dict[str, BusCredentials]]:
    """Fresh credentials for ``ids`` (by id) and ``extra_roles`` (by user), and the
    nats-server config that admits them.

    The passwords exist for one run only: a leaked one dies with the run.

    Raises:
        ValueError: an extra role's user is already an identity's.
    """
    ids = tuple(ids)
    roles = [_role(i) for i in ids]
    extra = tuple(extra_roles)
    taken = {role.user for role in roles}
    for role in extra:
        if role.user in taken:
            raise ValueError(f"bus user {role.user!r} is taken by a slot or another role")
        taken.add(role.user)
    passwords = new_passwords((*roles, *extra))
    credentials = {
        i.id: BusCredentials(role.user, passwords[role.user])
        for i, role in zip(ids, roles, strict=True)
    }
    credentials |= {role.user: BusCredentials(role.user, passwords[role.user]) for role in extra}
    return authorization_config((*roles, *extra), passwords), credentials


def _role(identity: Identity) -> Role:
    match identity.role:
        case "edge":
            return edge_role(identity.id)
        case "actor":
            return actor_role(identity.id)
        case "observer":
            return observer_role()
        case "replay":
            return replay_role()


def process_env(identity: Identity, credentials: BusCredentials | None) -> dict[str, str]:
    """The environment variables that make a process ``identity`` on the bus."""
    env: dict[str, str] = {}
    if identity.role == "actor":
        env["YAP_ACTOR_ID"] = identity.id
    elif identity.role == "edge":
        env["YAP_EDGE_ID"] = identity.id
    if credentials is not None:
        env["YAP_BUS_USER"] = credentials.user
        env["YAP_BUS_PASSWORD"] = credentials.password
    return env
