"""The export format: JSON Lines, one header per session, then one line per event.

    {"format": "yap-recording", "version": 1, "session_id": "...", "started_at": "...",
     "started_ns": ..., "models": {...}, "deploy": "both", "concurrent": false,
     "config_hash": "...", "edge_id": "...", "redacted": false, "settings": {...},
     "events": 42}
    {"ms": 0.0, "dir": "client", "kind": "frame", "turn": null, "seq": null, "payload": {...}}
    {"ms": 3.61, "dir": "in", "kind": "tool.start", "turn": 1, "seq": null, "payload": {...}}

``ms`` is relative to the header's ``started_ns``; ``dir`` is client, edge, in or
out; ``turn`` is the turn's number in the session; ``seq`` the per-leg sequence of
outbound events. A file may hold several sessions, each from its header on.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Final

import msgspec

from bus.recording import FORMAT_VERSION, Deployment, SessionSnapshot
from replay.errors import CorruptFile, UnknownFormat
from replay.events import Event, Session
from replay.timeline import build_timeline

__all__ = ["FORMAT_NAME", "read_sessions", "write_sessions"]

FORMAT_NAME: Final = "yap-recording"
_DIRECTIONS: Final = frozenset({"client", "edge", "in", "out"})


def write_sessions(sessions: Iterable[Session], out: IO[str]) -> int:
    """Write each session (header, then events); returns the number of lines written."""
    lines = 0
    for session in sessions:
        turns = {t.turn_id: t.index for t in build_timeline(session).turns}
        deployment = session.deployment or Deployment()
        header = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "session_id": session.session_id,
            "started_at": datetime.datetime.fromtimestamp(
                session.started_ns / 1e9, tz=datetime.UTC
            ).isoformat(),
            "started_ns": session.started_ns,
            "models": deployment.models,
            "deploy": deployment.deploy,
            "concurrent": deployment.concurrent,
            "config_hash": deployment.config_hash,
            "edge_id": deployment.edge_id,
            "redacted": session.redacted,
            "settings": msgspec.to_builtins(session.settings) if session.settings else None,
            "events": len(session.events),
        }
        out.write(json.dumps(header, ensure_ascii=False) + "\n")
        lines += 1
        for event in session.events:
            line: dict[str, Any] = {
                "ms": (event.at_ns - session.started_ns) / 1e6,
                "dir": event.direction,
                "kind": event.kind,
                "turn": turns.get(event.turn_id or ""),
                "seq": event.seq,
                "payload": event.payload,
            }
            if event.actor_id:
                line["actor"] = event.actor_id
            if event.edge_id:
                line["edge"] = event.edge_id
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
            lines += 1
    return lines


def read_sessions(path: str | Path) -> list[Session]:
    """Every session in an export file.

    Raises:
        CorruptFile: a line is not JSON or not an event, or a session ends early;
            the message names the file and the line.
        UnknownFormat: a header of another format or version.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorruptFile(f"{path}: cannot read: {exc}") from None
    return list(_sessions(path, enumerate(text.splitlines(), start=1)))


def _sessions(path: Path, lines: Iterable[tuple[int, str]]) -> Iterator[Session]:
    header: dict[str, Any] | None = None
    header_line = 0
    events: list[Event] = []
    last = 0
    for number, raw in lines:
        last = number
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CorruptFile(
                f"{path}:{number}: not JSON ({exc.msg} at column {exc.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise CorruptFile(f"{path}:{number}: expected a JSON object")
        if "format" in obj:
            if header is not None:
                yield _finish(path, header_line, header, events, number - 1)
            header, header_line, events = _header(path, number, obj), number, []
            continue
        if header is None:
            raise CorruptFile(f"{path}:{number}: event before any header")
        events.append(_event(path, number, obj, header["started_ns"]))
    if header is None:
        raise CorruptFile(f"{path}: no session header (empty file?)")
    yield _finish(path, header_line, header, events, last)


def _header(path: Path, number: int, obj: dict[str, Any]) -> dict[str, Any]:
    if obj.get("format") != FORMAT_NAME:
        raise UnknownFormat(f"{path}:{number}: format {obj.get('format')!r} is not {FORMAT_NAME}")
    version = obj.get("version")
    if version != FORMAT_VERSION:
        raise UnknownFormat(
            f"{path}:{number}: format version {version!r} is not supported "
            f"(this tool reads version {FORMAT_VERSION})"
        )
    for key, kind in (("session_id", str), ("started_ns", int), ("events", int)):
        if not isinstance(obj.get(key), kind):
            raise CorruptFile(f"{path}:{number}: header needs '{key}' ({kind.__name__})")
    return obj


def _event(path: Path, number: int, obj: dict[str, Any], started_ns: int) -> Event:
    ms, direction, kind, payload = (
        obj.get("ms"),
        obj.get("dir"),
        obj.get("kind"),
        obj.get("payload"),
    )
    if not isinstance(ms, int | float) or isinstance(ms, bool):
        raise CorruptFile(f"{path}:{number}: 'ms' must be a number")
    if direction not in _DIRECTIONS:
        raise CorruptFile(f"{path}:{number}: 'dir' must be one of {sorted(_DIRECTIONS)}")
    if not isinstance(kind, str) or not isinstance(payload, dict):
        raise CorruptFile(f"{path}:{number}: needs 'kind' (text) and 'payload' (object)")
    actor, edge = obj.get("actor"), obj.get("edge")
    return Event(
        at_ns=started_ns + round(ms * 1e6),
        direction=direction,
        kind=kind,
        payload=payload,
        actor_id=actor if isinstance(actor, str) else None,
        edge_id=edge if isinstance(edge, str) else None,
    )


def _finish(
    path: Path, header_line: int, header: dict[str, Any], events: list[Event], last_line: int
) -> Session:
    expected = header["events"]
    if len(events) != expected:
        raise CorruptFile(
            f"{path}:{last_line}: session {header['session_id']!r} (header on line "
            f"{header_line}) has {len(events)} of its {expected} events"
        )
    session = Session.of(header["session_id"], events)
    try:
        settings = header.get("settings")
        snapshot = msgspec.convert(settings, SessionSnapshot) if settings else None
        deployment = msgspec.convert(
            {
                key: header[key]
                for key in ("models", "deploy", "concurrent", "config_hash", "edge_id")
                if key in header
            },
            Deployment,
        )
    except msgspec.ValidationError as exc:
        raise CorruptFile(f"{path}:{header_line}: bad header: {exc}") from None
    return Session(
        session.session_id,
        session.events,
        snapshot or session.settings,
        session.deployment or deployment,
    )
