"""The chat prompt: persona and history segments that are stable, cacheable prefixes."""

from __future__ import annotations

import pytest

from actors.engines.fake import FakeTokenizer
from actors.prompts.chat import (
    HISTORY_LABEL,
    build_chat_prompt,
    history_warm_prompt,
    persona_warm_prompt,
)
from tests.unit.prompts.stubs import (
    CHATML_TEMPLATE,
    FOLDING_TEMPLATE,
    TRIMMING_TEMPLATE,
    WordTokenizer,
    byte_bpe_tokenizer,
)

PERSONA = "You are a cheerful companion.\n\nYou are a woman."
HISTORY = "user: hi there\nassistant: hey, how was your day?\nuser: long."


@pytest.fixture(
    scope="module",
    params=["fake", "words", "chatml", "trimming", "folding"],
)
def tokenizer(request):
    match request.param:
        case "fake":
            return FakeTokenizer()
        case "words":
            return WordTokenizer()
        case "chatml":
            return byte_bpe_tokenizer(CHATML_TEMPLATE)
        case "trimming":
            return byte_bpe_tokenizer(TRIMMING_TEMPLATE)
        case _:
            return byte_bpe_tokenizer(FOLDING_TEMPLATE)


@pytest.fixture(scope="module")
def chatml():
    return byte_bpe_tokenizer(CHATML_TEMPLATE)


def build(tokenizer, history=HISTORY, utterance="what's up?", **budgets):
    return build_chat_prompt(
        tokenizer,
        persona_text=PERSONA,
        history_text=history,
        user_utterance=utterance,
        **budgets,
    )


@pytest.mark.parametrize("history", [HISTORY, "", "   "])
def test_prefixes_nest(tokenizer, history):
    """text starts with history_prefix, which starts with persona_prefix, for every template."""
    prompt = build(tokenizer, history=history)
    assert prompt.text.startswith(prompt.history_prefix)
    assert prompt.history_prefix.startswith(prompt.persona_prefix)


def test_prefixes_cover_their_segments(tokenizer):
    """The persona prefix holds the persona, the history prefix also the history, not the turn."""
    prompt = build(tokenizer, utterance="what's up?")
    assert PERSONA.strip() in prompt.persona_prefix
    assert HISTORY_LABEL.strip() not in prompt.persona_prefix
    assert "long." in prompt.history_prefix
    assert "what's up?" not in prompt.history_prefix


def test_warm_prompts_equal_the_turn_prefixes(tokenizer):
    """The warm helpers return the exact prefixes a later turn starts with, for every template."""
    prompt = build(tokenizer)
    assert persona_warm_prompt(tokenizer, PERSONA) == prompt.persona_prefix
    assert history_warm_prompt(tokenizer, PERSONA, HISTORY, 3000) == prompt.history_prefix
    assert history_warm_prompt(tokenizer, PERSONA, "", 3000) == prompt.persona_prefix


def test_warm_prompts_follow_the_history_budget(chatml):
    """history_warm_prompt trims the history like the turn does."""
    prompt = build(chatml, history_max_tokens=7)
    assert history_warm_prompt(chatml, PERSONA, HISTORY, 7) == prompt.history_prefix


def test_chatml_layout(chatml):
    """With ChatML the prompt is persona, history, user turn and the assistant opener."""
    prompt = build(chatml)
    assert prompt.persona_prefix == f"<|im_start|>system\n{PERSONA}<|im_end|>\n"
    assert prompt.history_prefix == (
        f"{prompt.persona_prefix}<|im_start|>system\n{HISTORY_LABEL}{HISTORY}<|im_end|>\n"
    )
    assert prompt.text == (
        f"{prompt.history_prefix}<|im_start|>user\nwhat's up?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_empty_history_has_no_history_segment(chatml):
    """Without history the history prefix is the persona prefix and no label is rendered."""
    prompt = build(chatml, history="")
    assert prompt.history_prefix == prompt.persona_prefix
    assert HISTORY_LABEL not in prompt.text


def test_persona_prefix_is_stable_across_turns(chatml):
    """Different histories and utterances leave the persona prefix unchanged."""
    first = build(chatml, history="user: a", utterance="one")
    second = build(chatml, history="user: b\nassistant: c", utterance="two")
    assert first.persona_prefix == second.persona_prefix


def test_history_prefix_is_stable_across_utterances(chatml):
    """The same history with a new utterance keeps the history prefix."""
    assert (
        build(chatml, utterance="one").history_prefix
        == build(chatml, utterance="two").history_prefix
    )


def test_history_keeps_its_newest_tokens():
    """A long history is cut to its last history_max_tokens tokens."""
    tokenizer = WordTokenizer()
    history = " ".join(f"w{i}" for i in range(100))
    prompt = build(tokenizer, history=history, history_max_tokens=5)
    assert f"{HISTORY_LABEL}w95 w96 w97 w98 w99<|im_end|>" in prompt.history_prefix
    assert "w94" not in prompt.text


def test_utterance_keeps_its_first_tokens():
    """A long utterance is cut to its first user_utt_max_tokens tokens."""
    tokenizer = WordTokenizer()
    utterance = " ".join(f"u{i}" for i in range(100))
    prompt = build(tokenizer, utterance=utterance, user_utt_max_tokens=4)
    assert "<|im_start|>user\nu0 u1 u2 u3<|im_end|>" in prompt.text
    assert "u4" not in prompt.text


def test_zero_history_budget_drops_the_history(chatml):
    """A history budget of zero leaves out the history segment."""
    prompt = build(chatml, history_max_tokens=0)
    assert prompt.history_prefix == prompt.persona_prefix
    assert HISTORY_LABEL not in prompt.text


def test_folding_template_falls_back_to_content_cuts():
    """When the template moves the system text, prefixes end after the segment's content."""
    tokenizer = byte_bpe_tokenizer(FOLDING_TEMPLATE)
    prompt = build(tokenizer)
    assert prompt.persona_prefix.endswith(PERSONA)
    assert prompt.history_prefix.endswith(HISTORY)
    assert prompt.text.startswith(prompt.history_prefix)
