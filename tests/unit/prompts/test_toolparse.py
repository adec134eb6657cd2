"""Parsing Hammer output, whole or truncated, and deciding early from the stream."""

from __future__ import annotations

from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.prompts.hammer import TAKE_SCREENSHOT_TOOL
from actors.prompts.toolparse import ToolDecider, ToolDecision, parse_tool_output
from bus.events import ToolCallSpec
from tests.unit.prompts.stubs import SET_TIMER

CALL = '[{"name": "take_screenshot", "arguments": {}}]'
SHOT = ToolCallSpec(name="take_screenshot", arguments={})
OPEN_CAMERA = {"name": "open_camera", "description": "Open the camera.", "parameters": {}}
TOOLS = (TAKE_SCREENSHOT_TOOL, SET_TIMER, OPEN_CAMERA)
NAMES = ("take_screenshot", "set_timer", "open_camera")


class Case(NamedTuple):
    text: str
    status: str
    calls: tuple[ToolCallSpec, ...]
    # The output starts with its JSON (after any fence), as Hammer writes it, and
    # calls only the known tool; the streaming decider must then agree with parse.
    streams: bool = True


CASES = [
    # A call, in the shapes Hammer and its cousins write it.
    Case(CALL, "yes", (SHOT,)),
    Case('[{"name":"take_screenshot","arguments":{}}]', "yes", (SHOT,)),
    Case('[\n  {"name": "take_screenshot", "arguments": {}}\n]', "yes", (SHOT,)),
    Case(" \n" + CALL, "yes", (SHOT,)),
    Case(f"```json\n{CALL}\n```", "yes", (SHOT,)),
    Case(f"```\n{CALL}\n```", "yes", (SHOT,)),
    Case(f"```json{CALL}```", "yes", (SHOT,)),
    Case(f"`{CALL}`", "yes", (SHOT,)),
    Case('{"tool_calls": [{"name": "take_screenshot", "arguments": {}}]}', "yes", (SHOT,)),
    Case('{"name": "take_screenshot", "arguments": {}}', "yes", (SHOT,)),
    Case('[{"name": "take_screenshot", "arguments": "{}"}]', "yes", (SHOT,)),
    Case('[{"name": "take_screenshot"}]', "yes", (SHOT,)),
    Case('[{"name": "take_screenshot", "parameters": {}}]', "yes", (SHOT,)),
    Case('[{"arguments": {}, "name": "take_screenshot"}]', "yes", (SHOT,)),
    Case('[{"name": "take_screenshot", "arguments": {}},]', "yes", (SHOT,)),
    Case("[{'name': 'take_screenshot', 'arguments': {}}]", "yes", (SHOT,)),
    Case('<tool_call>\n{"name": "take_screenshot", "arguments": {}}\n</tool_call>', "yes", (SHOT,)),
    Case(
        '[{"type": "function", "function": {"name": "take_screenshot", "arguments": "{}"}}]',
        "yes",
        (SHOT,),
    ),
    Case(f"{CALL}\n\nThe user wants me to look at their screen.", "yes", (SHOT,)),
    Case(f"Sure, here you go: {CALL}", "yes", (SHOT,), streams=False),
    Case(f"I will take a screenshot.\n```json\n{CALL}\n```", "yes", (SHOT,), streams=False),
    # Cut off by the output cap.
    Case('[{"name": "take_screensh', "yes", (SHOT,)),
    Case('[{"name": "take_', "yes", (SHOT,)),
    Case('[{"name": "', "yes", (SHOT,)),
    Case('[{"na', "yes", (SHOT,)),
    Case("[{", "yes", (SHOT,)),
    Case('[{"name": "take_screenshot", "argu', "yes", (SHOT,)),
    Case('[{"name": "take_screenshot", "arguments": {', "yes", (SHOT,)),
    Case('```json\n[{"name": "take_screenshot", "arguments":', "yes", (SHOT,)),
    Case('{"tool_calls": [{"name": "take_scr', "yes", (SHOT,)),
    # Several calls, and tools the prompt never offered.
    Case(f"[{CALL[1:-1]}, {CALL[1:-1]}]", "yes", (SHOT, SHOT), streams=False),
    Case(
        '[{"name": "open_app", "arguments": {"app": "spotify"}}]',
        "yes",
        (ToolCallSpec(name="open_app", arguments={"app": "spotify"}),),
        streams=False,
    ),
    Case('[{"name": "open_sp', "yes", (ToolCallSpec(name="open_sp"),), streams=False),
    Case(
        '{"name": "set_alarm", "arguments": "{\\"hour\\": 7, \\"am\\": true}"}',
        "yes",
        (ToolCallSpec(name="set_alarm", arguments={"hour": 7, "am": True}),),
        streams=False,
    ),
    # No call.
    Case("[]", "no", ()),
    Case("[ ]", "no", ()),
    Case("[]\n", "no", ()),
    Case("```json\n[]\n```", "no", ()),
    Case("```\n[]\n```", "no", ()),
    Case("`[]`", "no", ()),
    Case('{"tool_calls": []}', "no", ()),
    Case('{"tool_calls": null}', "no", ()),
    Case("[]\n\nThe user is only saying hello.", "no", ()),
    Case("", "no", ()),
    Case("   \n", "no", ()),
    Case("[", "no", ()),
    Case("```json", "no", ()),
    Case("No tool is needed for this request.", "no", ()),
    Case("I'm sorry, none of the functions can be used.", "no", ()),
    Case("[{}]", "no", (), streams=False),
    Case('["take_screenshot"]', "no", ()),
    Case("[take_screenshot]", "no", ()),
    Case("null", "no", ()),
    Case('{"result": "none"}', "no", ()),
    Case("[[]]", "no", ()),
    Case("<|im_end|>", "no", ()),
]


def names_and_args(decision: ToolDecision) -> tuple[tuple[str, dict[str, object]], ...]:
    return tuple((call.name, call.arguments) for call in decision.calls)


def feed_all(
    decider: ToolDecider, pieces: list[str]
) -> tuple[list[ToolDecision | None], ToolDecision]:
    seen = [decider.feed(piece) for piece in pieces]
    return seen, decider.finish()


@pytest.mark.parametrize("case", CASES, ids=[repr(c.text)[:60] for c in CASES])
def test_parse_corpus(case):
    """Each Hammer-style output parses to the expected status and calls, with raw kept."""
    decision = parse_tool_output(case.text)
    assert (decision.status, decision.calls) == (case.status, case.calls)
    assert decision.raw == case.text


STREAMED = [c for c in CASES if c.streams]


@pytest.mark.parametrize("case", STREAMED, ids=[repr(c.text)[:60] for c in STREAMED])
@pytest.mark.parametrize("eager", [True, False])
def test_decider_agrees_with_parse_at_any_chunking(case, eager):
    """Streamed one character or four at a time, the decider ends where parse ends."""
    for size in (1, 4):
        pieces = [case.text[i : i + size] for i in range(0, len(case.text), size)]
        seen, final = feed_all(ToolDecider(eager=eager), pieces)
        assert (final.status, final.calls) == (case.status, case.calls)
        decided = [d for d in seen if d is not None]
        assert all(d is decided[0] for d in decided)


@pytest.mark.parametrize("eager", [True, False])
@pytest.mark.parametrize(
    "full",
    [CALL, "```json\n" + CALL + "\n```", '{"tool_calls": ' + CALL + "}", "[]", "```json\n[]\n```"],
)
def test_every_cut_point_is_undecided_or_final(full, eager):
    """At every cut, a fresh decider is undecided or already says what the full text says."""
    expected = parse_tool_output(full)
    decided_from = None
    for cut in range(len(full) + 1):
        decision = ToolDecider(eager=eager).feed(full[:cut])
        if decision is None:
            assert decided_from is None, f"undecided again at {full[:cut]!r}"
            continue
        decided_from = cut if decided_from is None else decided_from
        assert (decision.status, decision.calls) == (expected.status, expected.calls)
    assert decided_from is not None


def test_eager_decider_says_yes_at_the_open_brace():
    """With one parameterless tool, '[{' is enough for yes."""
    decider = ToolDecider()
    assert decider.feed("[") is None
    decision = decider.feed("{")
    assert decision is not None and decision.status == "yes" and decision.calls == (SHOT,)
    assert decision.raw == "[{"


def test_patient_decider_waits_for_the_closed_name():
    """Without eagerness, yes comes when the name string closes."""
    decider = ToolDecider(eager=False)
    prefix = '[{"name": "take_screenshot'
    assert all(decider.feed(ch) is None for ch in prefix)
    decision = decider.feed('"')
    assert decision is not None and decision.calls == (SHOT,)


def test_decider_says_no_at_the_empty_list():
    """'[]' decides no at once, and later text cannot change it."""
    decider = ToolDecider()
    assert decider.feed("[") is None
    decision = decider.feed("]")
    assert decision is not None and decision.status == "no"
    assert decider.feed(' [{"name": "take_screenshot"}]') is decision
    assert decider.finish() is decision


@pytest.mark.parametrize("opening", ["Sure", "No", "I ", "\n\nThe", "```json\nNo", "[1", '["'])
def test_decider_says_no_when_the_answer_cannot_be_a_call(opening):
    """Text that cannot start a call list decides no right away."""
    decision = ToolDecider().feed(opening)
    assert decision is not None and decision.status == "no"


@pytest.mark.parametrize(
    "opening", ["", "  ", "`", "``", "```", "```js", "```json\n", "<tool", "["]
)
def test_decider_waits_on_openers(opening):
    """Whitespace, a fence or tag opener, or a bare '[' decide nothing yet."""
    assert ToolDecider().feed(opening) is None


def test_prose_first_is_no_for_the_decider_but_yes_for_parse():
    """The decider judges the start of the output; parse looks past leading prose."""
    text = f"Sure, here you go: {CALL}"
    assert ToolDecider().feed(text).status == "no"
    assert parse_tool_output(text).status == "yes"


def test_truncated_output_finishes_as_yes():
    """A stream cut inside the name finishes as a call to the tool the name starts."""
    decider = ToolDecider(eager=False)
    for piece in ['[{"', "name", '":', ' "', "take", "_scr"]:
        assert decider.feed(piece) is None
    assert decider.finish().calls == (SHOT,)


def test_several_tools_decide_on_the_closed_name():
    """With several tools, a parameterless one is decided once its name closes."""
    decider = ToolDecider(TOOLS)
    assert decider.feed('[{"name": "open_camera') is None
    decision = decider.feed('", "arg')
    assert decision is not None and decision.calls == (ToolCallSpec(name="open_camera"),)


def test_tool_with_parameters_waits_for_its_arguments():
    """A tool with parameters is decided only once its call object closes."""
    decider = ToolDecider(TOOLS)
    text = '[{"name": "set_timer", "arguments": {"minutes": 5}}'
    assert all(decider.feed(ch) is None for ch in text[:-1])
    decision = decider.feed(text[-1])
    assert decision is not None
    assert decision.calls == (ToolCallSpec(name="set_timer", arguments={"minutes": 5}),)


def test_partial_name_completes_only_when_unambiguous():
    """A cut name completes to the one known tool it starts; otherwise it stays partial."""
    assert parse_tool_output('[{"name": "set_t', NAMES).calls == (ToolCallSpec(name="set_timer"),)
    assert parse_tool_output('[{"name": "o', NAMES).calls == (ToolCallSpec(name="open_camera"),)
    names = (*NAMES, "set_theme")
    assert parse_tool_output('[{"name": "set_t', names).calls == (ToolCallSpec(name="set_t"),)


def test_open_call_without_name_is_yes_without_calls_among_several_tools():
    """A call cut before its name is yes; with several tools its name stays unknown."""
    decision = parse_tool_output('[{"na', NAMES)
    assert decision.status == "yes" and decision.calls == ()


def test_truncated_string_arguments_are_read_as_far_as_they_go():
    """Arguments given as a JSON string that was cut off keep their complete part."""
    text = '[{"name": "set_timer", "arguments": "{\\"minutes\\": 5, \\"label\\": \\"te'
    decision = parse_tool_output(text, NAMES)
    assert names_and_args(decision) == (("set_timer", {"minutes": 5, "label": "te"}),)


@given(st.text(alphabet='[]{}":, \n`abc_{}tn01\\', max_size=40))
def test_parse_never_fails(text):
    """Any text parses to a yes/no decision without raising."""
    decision = parse_tool_output(text)
    assert decision.status in ("yes", "no")


@given(st.text(max_size=30), st.lists(st.integers(min_value=1, max_value=5), max_size=10))
def test_decider_never_fails_and_never_flips(text, sizes):
    """Any stream, chunked any way, gives at most one decision that never changes."""
    decider = ToolDecider()
    pieces, at = [], 0
    for size in sizes:
        pieces.append(text[at : at + size])
        at += size
    pieces.append(text[at:])
    seen, final = feed_all(decider, pieces)
    decided = [d for d in seen if d is not None]
    assert all(d is final for d in decided)
    assert final.status in ("yes", "no")
