"""The Hammer tool prompt: its sections, trimming, stable prefix and the fake engine's view."""

from __future__ import annotations

import json

import pytest

from actors.engines.base import SamplingSpec
from actors.engines.fake import FakeEngine, FakeTokenizer
from actors.prompts.hammer import (
    TAKE_SCREENSHOT_TOOL,
    build_tool_prompt,
    tool_names,
    tools_without_parameters,
)
from configs.schema import EngineConfig
from tests.unit.prompts.stubs import (
    CHATML_TEMPLATE,
    SET_TIMER,
    WordTokenizer,
    byte_bpe_tokenizer,
)

MARKERS = [
    "[BEGIN OF TASK INSTRUCTION]",
    "[END OF TASK INSTRUCTION]",
    "[BEGIN OF AVAILABLE TOOLS]",
    "[END OF AVAILABLE TOOLS]",
    "[BEGIN OF FORMAT INSTRUCTION]",
    "[END OF FORMAT INSTRUCTION]",
    "[BEGIN OF QUERY]",
    "[END OF QUERY]",
]


def section(prompt: str, name: str) -> str:
    return prompt.split(f"[BEGIN OF {name}]\n", 1)[1].split(f"\n[END OF {name}]", 1)[0]


def test_screenshot_tool_definition():
    """take_screenshot is a JSON-schema tool about the user's screen with no required params."""
    assert TAKE_SCREENSHOT_TOOL["name"] == "take_screenshot"
    assert "screen" in TAKE_SCREENSHOT_TOOL["description"]
    assert TAKE_SCREENSHOT_TOOL["parameters"]["required"] == []
    assert tools_without_parameters([TAKE_SCREENSHOT_TOOL, SET_TIMER]) == {"take_screenshot"}
    assert tool_names([TAKE_SCREENSHOT_TOOL, SET_TIMER]) == ("take_screenshot", "set_timer")


def test_flat_parameter_schemas_count_as_parameters():
    """A tool in xLAM's flat parameter form with arguments is not parameterless."""
    flat = {"name": "open_app", "description": "", "parameters": {"app": {"type": "string"}}}
    assert tools_without_parameters([flat]) == frozenset()


def test_sections_come_in_order():
    """All section markers are present, in the model's order, once each."""
    prompt = build_tool_prompt(FakeTokenizer(), user_utterance="hi", history_text="user: yo")
    positions = [prompt.index(marker) for marker in MARKERS]
    assert positions == sorted(positions)
    assert all(prompt.count(marker) == 1 for marker in MARKERS)
    assert prompt.index("[END OF FORMAT INSTRUCTION]") < prompt.index("user: yo")
    assert prompt.index("user: yo") < prompt.index("[BEGIN OF QUERY]")


def test_query_is_the_last_section():
    """The utterance sits after the last [BEGIN OF QUERY], as the fake engine reads it."""
    prompt = build_tool_prompt(FakeTokenizer(), user_utterance="  can you see my screen?  ")
    assert section(prompt, "QUERY") == "can you see my screen?"
    assert "[BEGIN OF" not in prompt.rsplit("[BEGIN OF QUERY]", 1)[1]


def test_tools_section_is_the_tools_json():
    """The tools section is a JSON list of the given definitions."""
    tools = (TAKE_SCREENSHOT_TOOL, SET_TIMER)
    prompt = build_tool_prompt(FakeTokenizer(), user_utterance="hi", tools=tools)
    assert json.loads(section(prompt, "AVAILABLE TOOLS")) == [dict(t) for t in tools]


def test_format_instruction_asks_for_a_json_list_or_empty_list():
    """The format section describes the call list and the empty list."""
    text = section(build_tool_prompt(FakeTokenizer(), user_utterance="hi"), "FORMAT INSTRUCTION")
    assert '"name"' in text and '"arguments"' in text and "[]" in text


def test_blank_history_has_no_history_section():
    """Without history the prompt goes straight from the format section to the query."""
    prompt = build_tool_prompt(FakeTokenizer(), user_utterance="hi", history_text=" \n ")
    assert "CONVERSATION" not in prompt
    assert "[END OF FORMAT INSTRUCTION]\n\n[BEGIN OF QUERY]" in prompt


def test_history_keeps_its_newest_tokens():
    """The history is cut to its last history_max_tokens tokens."""
    history = " ".join(f"h{i}" for i in range(50))
    prompt = build_tool_prompt(
        WordTokenizer(), user_utterance="hi", history_text=history, history_max_tokens=3
    )
    assert "h47 h48 h49" in prompt
    assert "h46" not in prompt


def test_utterance_keeps_its_first_tokens():
    """The utterance is cut to its first user_utt_max_tokens tokens."""
    utterance = " ".join(f"q{i}" for i in range(50))
    prompt = build_tool_prompt(WordTokenizer(), user_utterance=utterance, user_utt_max_tokens=2)
    assert section(prompt, "QUERY") == "q0 q1"


def test_static_part_is_a_shared_prefix():
    """Two different turns share the prompt up to the history and query."""
    tokenizer = byte_bpe_tokenizer(CHATML_TEMPLATE)
    a = build_tool_prompt(tokenizer, user_utterance="hello", history_text="user: a")
    b = build_tool_prompt(tokenizer, user_utterance="look at this", history_text="")
    static = a.split("[END OF FORMAT INSTRUCTION]")[0]
    assert b.startswith(static) and "[BEGIN OF AVAILABLE TOOLS]" in static


def test_chatml_wraps_one_user_message_with_generation_prompt():
    """With ChatML the prompt is a single user message followed by the assistant opener."""
    prompt = build_tool_prompt(byte_bpe_tokenizer(CHATML_TEMPLATE), user_utterance="hi")
    assert prompt.startswith("<|im_start|>user\n[BEGIN OF TASK INSTRUCTION]")
    assert prompt.endswith("[END OF QUERY]\n\n<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.count("<|im_start|>") == 2


@pytest.mark.parametrize(
    ("utterance", "expected"),
    [
        ("hey, can you look at my screen?", '[{"name": "take_screenshot", "arguments": {}}]'),
        ("tell me a joke", "[]"),
    ],
)
async def test_fake_engine_reads_the_prompt(utterance, expected):
    """The fake engine treats the prompt as a tool prompt and answers from the query."""
    engine = FakeEngine(EngineConfig(bench_tokens_per_s=0))
    prompt = build_tool_prompt(
        engine.tokenizer, user_utterance=utterance, history_text="user: check my screen later"
    )
    prompt_ids = engine.tokenizer.encode(prompt)
    pieces = [
        out.text async for out in engine.generate(prompt_ids, SamplingSpec(max_tokens=50), "t1")
    ]
    assert "".join(pieces) == expected
