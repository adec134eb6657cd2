"""Who may publish and subscribe to what on the bus, as nats-server config.

Every process connects as its own user, named by its id, with permissions built
from that id:

- an edge publishes only the ``in`` subjects (starts, warms, cancels), its own
  stats and the session KV bucket's API, and reads only its own outbound subjects
  (``yap.edge.<its id>.session.*.out.>``), heartbeats and replies to its own inbox
  prefix (``_INBOX.<its id>.>``): it cannot read another edge's sessions or replies;
- an actor reads the ``in`` subjects, answers requests (``allow_responses``) and
  publishes only outbound subjects that carry its own id as the sender, and its own
  heartbeat: with the edge accepting a leg's events only from the actor that
  accepted the leg, a leaked actor password cannot write into another actor's leg;
- the observer (``just status``) only reads heartbeats and edge stats;
- the replay user (``python -m replay``) alone reads the session recordings, and
  besides the edges it alone writes session settings (to restore a recorded seed,
  clock and persona). An edge may publish its recording records and set the
  recording stream up, but never read it.

Anonymous connections are refused outright. Other roles (tools) are ``Role``
values of their own, passed to :func:`authorization_config` beside these.

A static deployment whose nats-server config cannot name every process (a
Kubernetes Deployment's pods get random names) uses :func:`shared_roles` instead:
one ``edge`` and one ``actor`` user for all of them, with the same subjects for any
id. That is weaker, and says so: any edge's password reads every edge's sessions
and replies, and any actor's can speak as any actor, so the edge's check that a
leg's events come from the actor that accepted it no longer stops a leaked actor
password. ``just up`` makes a user per id.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from bus import subjects
from bus.recording import STREAM as RECORDING_STREAM

__all__ = [
    "OBSERVER",
    "REPLAY",
    "SESSIONS_KV",
    "Role",
    "actor_role",
    "authorization_config",
    "deployment_roles",
    "edge_role",
    "new_passwords",
    "observer_role",
    "replay_role",
    "shared_roles",
]

SESSIONS_KV: Final = "yap_sessions"
OBSERVER: Final = "observer"
REPLAY: Final = "replay"

# What the edge's session store needs of JetStream: find or make the KV bucket,
# read and write its keys. Replies come back to the edge's own inbox.
_SESSIONS_KV_API: Final = (
    f"$JS.API.STREAM.INFO.KV_{SESSIONS_KV}",
    f"$JS.API.STREAM.CREATE.KV_{SESSIONS_KV}",
    f"$JS.API.STREAM.MSG.GET.KV_{SESSIONS_KV}",
    f"$JS.API.DIRECT.GET.KV_{SESSIONS_KV}.>",
    f"$KV.{SESSIONS_KV}.>",
    "$JS.API.INFO",
)
# What an edge needs for session recording: publish its records on the sessions'
# client subjects, and find, make or update the stream (its [recording] config
# says how). Reading the stream is not among them.
_RECORDING_EDGE: Final = (
    subjects.all_clients(),
    f"$JS.API.STREAM.INFO.{RECORDING_STREAM}",
    f"$JS.API.STREAM.CREATE.{RECORDING_STREAM}",
    f"$JS.API.STREAM.UPDATE.{RECORDING_STREAM}",
)


@dataclass(frozen=True, slots=True)
class Role:
    user: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    # Lets a user answer requests it received (reply subjects) without a blanket
    # right to publish on _INBOX.
    allow_responses: bool = False


def edge_role(edge_id: str) -> Role:
    """The user of edge ``edge_id``: its own outbound subjects and inbox, nothing else's."""
    return Role(
        user=subjects.validate_id(edge_id),
        publish=(
            f"{subjects.PREFIX}.session.*.in.>",
            subjects.edge_stats(edge_id),
            *_SESSIONS_KV_API,
            *_RECORDING_EDGE,
        ),
        subscribe=(
            subjects.edge_outbox(edge_id),
            subjects.ALL_HEARTBEATS,
            f"{subjects.inbox_prefix(edge_id)}.>",
        ),
    )


def actor_role(actor_id: str) -> Role:
    """The user of actor ``actor_id``: it may speak only as itself."""
    return Role(
        user=subjects.validate_id(actor_id),
        publish=(
            subjects.out_from(actor_id),
            f"{subjects.PREFIX}.actor.*.{actor_id}.heartbeat",
        ),
        subscribe=(f"{subjects.PREFIX}.session.*.in.>",),
        allow_responses=True,
    )


def observer_role() -> Role:
    return Role(
        user=OBSERVER, publish=(), subscribe=(subjects.ALL_HEARTBEATS, subjects.ALL_EDGE_STATS)
    )


def replay_role() -> Role:
    """The user of ``python -m replay``: the one reader of recordings.

    It reads the stream through ephemeral ordered consumers, imports sessions
    under the import prefix (which only the stream listens to), and writes a
    session's KV entry: that is the operator-only way a replay restores the
    recorded seed, clock and persona. Replies come to its own inbox prefix.
    """
    stream = RECORDING_STREAM
    return Role(
        user=REPLAY,
        publish=(
            "$JS.API.INFO",
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.STREAM.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.INFO.{stream}.>",
            f"$JS.API.CONSUMER.DELETE.{stream}.>",
            f"$JS.FC.{stream}.>",  # flow-control replies of ordered consumers
            subjects.imported(">"),
            f"$JS.API.STREAM.INFO.KV_{SESSIONS_KV}",
            f"$KV.{SESSIONS_KV}.>",
        ),
        subscribe=(f"{subjects.inbox_prefix(REPLAY)}.>",),
    )


def shared_roles() -> tuple[Role, ...]:
    """One user per process kind (``edge``, ``actor``), the observer and the replay
    user: every id's subjects, for nats-server configs written ahead of time (see the
    module docstring)."""
    return (
        Role(
            user="edge",
            publish=(
                f"{subjects.PREFIX}.session.*.in.>",
                subjects.ALL_EDGE_STATS,
                *_SESSIONS_KV_API,
                *_RECORDING_EDGE,
            ),
            subscribe=(subjects.all_out(), subjects.ALL_HEARTBEATS, f"{subjects.INBOX}.>"),
        ),
        Role(
            user="actor",
            publish=(subjects.all_out(), subjects.ALL_HEARTBEATS),
            subscribe=(f"{subjects.PREFIX}.session.*.in.>",),
            allow_responses=True,
        ),
        observer_role(),
        replay_role(),
    )


def deployment_roles(edge_ids: Iterable[str], actor_ids: Iterable[str]) -> tuple[Role, ...]:
    """One user per edge and per actor, the observer and the replay user."""
    return (
        *(edge_role(e) for e in edge_ids),
        *(actor_role(a) for a in actor_ids),
        observer_role(),
        replay_role(),
    )


def new_passwords(roles: Iterable[Role]) -> dict[str, str]:
    """Fresh random passwords, one per user, for one run of the system."""
    return {role.user: secrets.token_urlsafe(24) for role in roles}


def authorization_config(roles: Iterable[Role], passwords: Mapping[str, str]) -> str:
    """The ``authorization`` block of a nats-server config for these users.

    Raises:
        ValueError: two roles share a user name (an edge and an actor with one id),
            or a role has no password.
    """
    users = []
    seen: set[str] = set()
    for role in roles:
        if role.user in seen:
            raise ValueError(f"two bus users are named {role.user!r}; ids must be unique")
        seen.add(role.user)
        if role.user not in passwords:
            raise ValueError(f"no password for bus user {role.user!r}")
        permissions: dict[str, object] = {
            # An empty allow list would mean "everything"; deny all instead.
            "publish": {"allow": list(role.publish)} if role.publish else {"deny": [">"]},
            "subscribe": {"allow": list(role.subscribe)},
        }
        if role.allow_responses:
            permissions["allow_responses"] = True
        users.append(
            {"user": role.user, "password": passwords[role.user], "permissions": permissions}
        )
    # JSON is valid nats-server config syntax.
    return f"authorization {json.dumps({'users': users}, indent=2)}"
