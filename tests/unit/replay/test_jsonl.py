"""The export file: round trip, and a clear error for each kind of bad file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from bus.recording import FORMAT_VERSION
from replay.errors import CorruptFile, UnknownFormat
from replay.jsonl import FORMAT_NAME, read_sessions, write_sessions
from tests.unit.replay import recorded


def _export(tmp_path: Path) -> Path:
    buffer = io.StringIO()
    write_sessions([recorded.session()], buffer)
    path = tmp_path / "session.jsonl"
    path.write_text(buffer.getvalue())
    return path


def test_header_then_one_line_per_event(tmp_path: Path) -> None:
    """The header names format, deployment and settings; events ms, dir, kind, turn, seq."""
    lines = _export(tmp_path).read_text().splitlines()
    header = json.loads(lines[0])
    assert (header["format"], header["version"]) == (FORMAT_NAME, FORMAT_VERSION)
    assert header["models"] == {"chat": "tiny-qwen2", "tool": "tiny-qwen2"}
    assert header["deploy"] == "both" and header["config_hash"] == "abc"
    assert header["settings"]["seed"] == 42
    assert header["events"] == len(lines) - 1
    events = [json.loads(line) for line in lines[1:]]
    assert events[0]["ms"] == 0 and events[0]["dir"] == "client"
    token = next(e for e in events if e["kind"] == "token")
    assert (token["dir"], token["turn"], token["seq"]) == ("out", 1, 1)
    assert token["payload"]["text"] == "Hello "
    assert all(set(e) >= {"ms", "dir", "kind", "turn", "seq", "payload"} for e in events)


def test_round_trip(tmp_path: Path) -> None:
    """Reading an export gives back the same session, event for event, to the nanosecond."""
    (session,) = read_sessions(_export(tmp_path))
    original = recorded.session()
    assert session.events == original.events
    assert session.settings == original.settings and session.deployment == original.deployment


def test_several_sessions_in_one_file(tmp_path: Path) -> None:
    """A file of two sessions reads as two."""
    path = _export(tmp_path)
    path.write_text(path.read_text() * 2)
    assert len(read_sessions(path)) == 2


def _corrupt(tmp_path: Path, number: int, text: str) -> Path:
    path = _export(tmp_path)
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("line", "text", "message"),
    [
        (3, '{"ms": 1, "dir": "out", "kind": "tok', "not JSON"),
        (4, "[1, 2]", "expected a JSON object"),
        (
            5,
            '{"ms": "soon", "dir": "out", "kind": "token", "payload": {}}',
            "'ms' must be a number",
        ),
        (6, '{"ms": 1, "dir": "sideways", "kind": "token", "payload": {}}', "'dir' must be one of"),
    ],
)
def test_corrupt_line_is_named(tmp_path: Path, line: int, text: str, message: str) -> None:
    """A bad line gets a CorruptFile naming the file and that line."""
    path = _corrupt(tmp_path, line, text)
    with pytest.raises(CorruptFile) as raised:
        read_sessions(path)
    assert str(raised.value).startswith(f"{path}:{line}: ") and message in str(raised.value)


def test_truncated_file(tmp_path: Path) -> None:
    """A session with fewer events than its header says is corrupt, at its last line."""
    path = _export(tmp_path)
    lines = path.read_text().splitlines()[:-3]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorruptFile, match=rf":{len(lines)}: .* of its"):
        read_sessions(path)


def test_unknown_version_and_format(tmp_path: Path) -> None:
    """Another version or format is UnknownFormat, naming what it found."""
    path = _export(tmp_path)
    header = json.loads(path.read_text().splitlines()[0])
    rest = path.read_text().splitlines()[1:]
    for change, expected in (({"version": 99}, "version 99"), ({"format": "other"}, "'other'")):
        path.write_text("\n".join([json.dumps({**header, **change}), *rest]) + "\n")
        with pytest.raises(UnknownFormat, match=expected):
            read_sessions(path)


def test_empty_and_headless_files(tmp_path: Path) -> None:
    """An empty file, or events before any header, are corrupt."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(CorruptFile, match="no session header"):
        read_sessions(empty)
    headless = tmp_path / "headless.jsonl"
    headless.write_text('{"ms": 0, "dir": "client", "kind": "frame", "payload": {}}\n')
    with pytest.raises(CorruptFile, match=":1: event before any header"):
        read_sessions(headless)
