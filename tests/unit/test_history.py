"""The canonical history format: lines, normalisation, append-only growth, the cap."""

from __future__ import annotations

import pytest

from bus.history import append_message, append_turn, cap_history, message_line, normalize_text


def test_normalize_collapses_whitespace_like_final() -> None:
    """Runs of whitespace become one space and the ends are stripped."""
    assert normalize_text("  hi\n\tthere   you ") == "hi there you"


def test_message_line_labels_each_role() -> None:
    """A message line is its role's label and the normalised text."""
    assert message_line("user", " look\nhere ") == "User: look here"
    assert message_line("assistant", "ok") == "Assistant: ok"
    assert message_line("user", "  \n ") == ""


def test_append_turn_grows_only_at_the_end() -> None:
    """Each exchange appends two lines; what was there stays a byte-exact prefix."""
    first = append_turn("", "hello", "Hi!  How are you?")
    assert first == "User: hello\nAssistant: Hi! How are you?"
    second = append_turn(first, "fine", "Good.")
    assert second.startswith(first + "\n")
    assert second.endswith("User: fine\nAssistant: Good.")


def test_blank_messages_append_nothing() -> None:
    """A blank reply (a cancelled turn, say) leaves only the user's line."""
    assert append_message("User: a", "assistant", " ") == "User: a"
    assert append_turn("", "q", "") == "User: q"


def test_cap_keeps_history_within_bounds() -> None:
    """Over the cap, whole lines go from the front until two thirds of it remain."""
    history = "\n".join(f"User: line {i:03d}" for i in range(100))
    capped = cap_history(history, 300)
    assert len(capped) <= 200
    assert history.endswith(capped)
    assert capped.split("\n")[0].startswith("User: line")


def test_cap_start_stays_put_while_history_grows() -> None:
    """After a cut, the next turns keep the same first line until the cap is hit again."""
    history = "\n".join(f"User: line {i:03d}" for i in range(30))
    capped = cap_history(history, 300)
    grown = append_turn(capped, "one more", "reply")
    assert cap_history(grown, 300).split("\n")[0] == capped.split("\n")[0]


def test_cap_within_budget_is_unchanged_and_validates() -> None:
    """A history within the cap comes back as it is; a negative cap is refused."""
    assert cap_history("User: a", 100) == "User: a"
    assert cap_history("User: " + "x" * 50, 10) == ""
    with pytest.raises(ValueError):
        cap_history("x", -1)
