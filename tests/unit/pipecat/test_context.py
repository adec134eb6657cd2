"""A Pipecat context split into the start's utterance and canonical history."""

from __future__ import annotations

import pytest

from bus.history import append_turn

pytest.importorskip("pipecat")

from integrations.pipecat.context import message_text, turn_input


def test_trailing_user_messages_are_the_utterance() -> None:
    """The user messages at the end are joined into one utterance, whitespace collapsed."""
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi there"},
        {"role": "user", "content": "what  is"},
        {"role": "user", "content": [{"type": "text", "text": "this\nthing"}]},
    ]
    request = turn_input(messages, max_history_chars=1000)
    assert request.user_utterance == "what is this thing"
    assert request.history_text == "User: hello\nAssistant: hi there"


def test_history_matches_what_the_chat_actor_appends() -> None:
    """A turn's history equals the previous history with the exchange appended, so
    the next prompt starts with the last one byte for byte."""
    first = turn_input([{"role": "user", "content": "a"}], max_history_chars=1000)
    second = turn_input(
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "reply  one "},
            {"role": "user", "content": "b"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "reply two"},
            {"role": "user", "content": "d"},
        ],
        max_history_chars=1000,
    )
    expected = append_turn(append_turn(first.history_text, "a", "reply one"), "b c", "reply two")
    assert (
        second.history_text
        == expected
        == "User: a\nAssistant: reply one\nUser: b c\nAssistant: reply two"
    )


def test_tool_messages_and_tool_only_calls_are_skipped() -> None:
    """Tool results, calls without text and service-specific messages never enter it."""
    messages = [
        {"role": "user", "content": "look at my screen"},
        {"role": "assistant", "tool_calls": [{"id": "x", "function": {"name": "take_screenshot"}}]},
        {"role": "tool", "tool_call_id": "x", "content": '{"image": "..."}'},
        {"role": "assistant", "content": "I see a terminal."},
        object(),  # an LLMSpecificMessage is no mapping
        {"role": "user", "content": "thanks"},
    ]
    request = turn_input(messages, max_history_chars=1000)
    assert request.user_utterance == "thanks"
    assert request.history_text == "User: look at my screen\nAssistant: I see a terminal."


@pytest.mark.parametrize(
    "last",
    [
        {"role": "tool", "tool_call_id": "x", "content": "done"},
        {"role": "assistant", "content": "already answered"},
    ],
)
def test_no_utterance_when_the_user_did_not_speak_last(last: dict) -> None:
    """A context ending in a tool result or the bot's words has nothing to answer."""
    messages = [{"role": "user", "content": "look at my screen"}, last]
    assert turn_input(messages, max_history_chars=1000).user_utterance == ""


def test_history_is_capped_in_steps() -> None:
    """Over the cap, whole old lines go, down to two thirds of it."""
    messages = []
    for i in range(20):
        messages += [
            {"role": "user", "content": f"question {i:02d}"},
            {"role": "assistant", "content": f"answer {i:02d}"},
        ]
    messages.append({"role": "user", "content": "last"})
    request = turn_input(messages, max_history_chars=200)
    assert len(request.history_text) <= 200 * 2 // 3
    assert request.history_text.endswith("Assistant: answer 19")
    assert request.history_text.startswith(("User: ", "Assistant: "))


def test_message_text_ignores_non_text_parts() -> None:
    """Image and audio parts carry no text; content of another shape gives none."""
    image = {"type": "image_url", "image_url": {"url": "data:..."}}
    assert message_text({"content": [image, {"type": "text", "text": "see"}]}) == "see"
    assert message_text({"content": None}) == ""
    assert message_text("not a message") == ""
