"""Who may publish and subscribe to what on the bus, as nats-server config.

Each process kind connects as its own user. The edge may only publish the ``in``
subjects and read the ``out`` ones; actors the reverse; an observer only reads
heartbeats. A leaked edge password therefore cannot forge a token into another
session's stream, and anonymous connections are refused outright.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from bus.recording import edge_permissions as recording_edge_permissions
from bus.recording import replay_permissions
from bus.subjects import PREFIX

__all__ = ["ROLES", "Role", "authorization_config", "new_passwords"]

SESSIONS_KV: Final = "yap_sessions"


@dataclass(frozen=True, slots=True)
class Role:
    user: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    # Lets a user answer requests it received (reply subjects) without a blanket
    # right to publish on _INBOX.
    allow_responses: bool = False


ROLES: Final[tuple[Role, ...]] = (
    Role(
        user="edge",
        publish=(
            f"{PREFIX}.session.*.in.>",
            f"{PREFIX}.edge.*.stats",
            # Session settings in a JetStream KV bucket.
            f"$JS.API.STREAM.INFO.KV_{SESSIONS_KV}",
            f"$JS.API.STREAM.CREATE.KV_{SESSIONS_KV}",
            f"$JS.API.STREAM.MSG.GET.KV_{SESSIONS_KV}",
            f"$JS.API.DIRECT.GET.KV_{SESSIONS_KV}.>",
            f"$KV.{SESSIONS_KV}.>",
            "$JS.API.INFO",
            # Session recording: its own records, and setting the stream up.
            *recording_edge_permissions(),
        ),
        subscribe=(f"{PREFIX}.session.*.out.>", f"{PREFIX}.actor.*.*.heartbeat", "_INBOX.>"),
    ),
    Role(
        user="actor",
        publish=(f"{PREFIX}.session.*.out.>", f"{PREFIX}.actor.*.*.heartbeat"),
        subscribe=(f"{PREFIX}.session.*.in.>",),
        allow_responses=True,
    ),
    Role(
        user="observer",
        publish=(),
        subscribe=(f"{PREFIX}.actor.*.*.heartbeat", f"{PREFIX}.edge.*.stats"),
    ),
    # python -m replay: the only reader of recordings, and the only one besides the
    # edge that may write a session's settings (to restore a recorded clock).
    Role(user="replay", publish=replay_permissions()[0], subscribe=replay_permissions()[1]),
)


def new_passwords() -> dict[str, str]:
    """Fresh random passwords, one per role, for one run of the system."""
    return {role.user: secrets.token_urlsafe(24) for role in ROLES}


def authorization_config(passwords: Mapping[str, str]) -> str:
    """The ``authorization`` block of a nats-server config for these passwords."""
    users = []
    for role in ROLES:
        permissions = {
            # An empty allow list would mean "everything"; deny all instead.
            "publish": {"allow": list(role.publish)} if role.publish else {"deny": [">"]},
            "subscribe": {"allow": list(role.subscribe)},
        }
        if role.allow_responses:
            permissions["allow_responses"] = True  # type: ignore[assignment]
        users.append(
            {"user": role.user, "password": passwords[role.user], "permissions": permissions}
        )
    # JSON is valid nats-server config syntax.
    return f"authorization {json.dumps({'users': users}, indent=2)}"
