"""The replay CLI's argument rules; no I/O."""

from __future__ import annotations

import datetime
import importlib.util

import pytest

from replay.cli import parse_args, parse_since
from replay.errors import ReplayError

NOW = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - datetime.timedelta(minutes=30)),
        ("2h", NOW - datetime.timedelta(hours=2)),
        ("1.5d", NOW - datetime.timedelta(hours=36)),
        ("2026-12-01T08:00:00", datetime.datetime(2026, 12, 1, 8, 0, tzinfo=datetime.UTC)),
        ("2026-12-01T08:00:00+01:00", datetime.datetime(2026, 12, 1, 7, 0, tzinfo=datetime.UTC)),
    ],
)
def test_since(text: str, expected: datetime.datetime) -> None:
    """Durations count back from now; ISO times without a zone are UTC."""
    assert parse_since(text, NOW) == expected


def test_since_rejects_nonsense() -> None:
    """Anything else is a one-line ReplayError."""
    with pytest.raises(ReplayError, match="--since 'yesterday'"):
        parse_since("yesterday", NOW)


@pytest.mark.parametrize(
    "argv",
    [
        ["replay", "s", "--fanout", "2", "--strict"],
        ["replay", "s", "--speed", "0"],
        ["replay", "s", "--speed", "2", "--asap"],
        ["export"],
    ],
)
def test_contradictions_are_usage_errors(argv: list[str]) -> None:
    """Strict with fanout, a zero speed, speed with asap, an export of nothing: exit 2."""
    with pytest.raises(SystemExit) as raised:
        parse_args(argv)
    assert raised.value.code == 2


def test_defaults() -> None:
    """Replay defaults: original pacing, one copy, restore on."""
    args = parse_args(["replay", "sid", "--url", "ws://h:1/ws"])
    assert (args.speed, args.asap, args.fanout, args.no_restore) == (1.0, False, 0, False)
    assert args.sources == ["sid"]


def test_plot_without_matplotlib_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--plot is refused before any replay runs when matplotlib is not installed."""
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit) as raised:
        parse_args(["replay", "s", "--fanout", "2", "--plot", "out.png"])
    assert raised.value.code == 2
    assert "pip install 'yap-bus[bench]'" in capsys.readouterr().err
