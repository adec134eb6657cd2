"""Exact token trimming of utterances (keep the start) and history (keep the end)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.engines.fake import FakeTokenizer
from actors.prompts.trim import trim_to_tokens
from tests.unit.prompts.stubs import WordTokenizer, byte_bpe_tokenizer

TEXT = "one two three four five six seven eight nine ten"


@pytest.fixture(scope="module")
def bpe():
    return byte_bpe_tokenizer()


def test_text_within_budget_is_returned_unchanged():
    """A text that fits comes back as the very same string."""
    text = "one two three"
    assert trim_to_tokens(WordTokenizer(), text, 3, "start") is text
    assert trim_to_tokens(WordTokenizer(), text, 3, "end") is text


def test_short_text_is_not_tokenized():
    """A text of fewer bytes than the budget is returned without calling the tokenizer."""
    tokenizer = WordTokenizer()
    assert trim_to_tokens(tokenizer, "hello there", 350, "start") == "hello there"
    assert tokenizer.encode_calls == 0


def test_keep_start_keeps_the_first_tokens():
    """keep='start' keeps exactly the first max_tokens words."""
    assert trim_to_tokens(WordTokenizer(), TEXT, 3, "start") == "one two three"


def test_keep_end_keeps_the_last_tokens():
    """keep='end' keeps exactly the last max_tokens words (with their leading space)."""
    assert trim_to_tokens(WordTokenizer(), TEXT, 3, "end") == " eight nine ten"


def test_fake_tokenizer_counts_characters():
    """With the one-token-per-character tokenizer the cut is exactly max_tokens characters."""
    text = "x" * 50 + "y" * 50
    assert trim_to_tokens(FakeTokenizer(), text, 60, "start") == "x" * 50 + "y" * 10
    assert trim_to_tokens(FakeTokenizer(), text, 60, "end") == "x" * 10 + "y" * 50


def test_zero_budget_gives_empty_text():
    """A budget of zero tokens leaves nothing."""
    assert trim_to_tokens(WordTokenizer(), TEXT, 0, "start") == ""
    assert trim_to_tokens(WordTokenizer(), TEXT, 0, "end") == ""


def test_negative_budget_raises():
    """A negative budget is a ValueError."""
    with pytest.raises(ValueError):
        trim_to_tokens(WordTokenizer(), TEXT, -1, "start")


def test_unknown_keep_raises():
    """keep must be 'start' or 'end'."""
    with pytest.raises(ValueError):
        trim_to_tokens(WordTokenizer(), TEXT, 3, "middle")  # type: ignore[arg-type]


@pytest.mark.parametrize("keep", ["start", "end"])
def test_byte_bpe_cut_never_leaves_a_broken_character(bpe, keep):
    """With byte-level BPE, every cut yields a clean prefix or suffix within the budget."""
    text = "naïve 🙂 café, déjà vu 🚀🚀 and 日本語 too"
    total = len(bpe.encode(text, add_special_tokens=False))
    for budget in range(1, total + 1):
        trimmed = trim_to_tokens(bpe, text, budget, keep)
        assert "\ufffd" not in trimmed
        assert text.startswith(trimmed) if keep == "start" else text.endswith(trimmed)
        assert len(bpe.encode(trimmed, add_special_tokens=False)) <= budget


@given(
    words=st.lists(st.sampled_from(["a", "bb", "ccc", "\n", "d!"]), max_size=40),
    budget=st.integers(min_value=0, max_value=45),
    keep=st.sampled_from(["start", "end"]),
)
def test_trimmed_text_fits_and_is_a_prefix_or_suffix(words, budget, keep):
    """Trimming never exceeds the budget and keeps a prefix (start) or suffix (end)."""
    tokenizer = WordTokenizer()
    text = " ".join(words)
    trimmed = trim_to_tokens(tokenizer, text, budget, keep)
    assert len(tokenizer.encode(trimmed)) <= budget
    assert text.startswith(trimmed) if keep == "start" else text.endswith(trimmed)
    if len(tokenizer.encode(text)) <= budget:
        assert trimmed == text


def test_history_cut_point_is_stable_as_it_grows() -> None:
    """As a transcript grows turn by turn past the budget, its trimmed front moves only
    in whole steps, so consecutive turns mostly share the same history start."""
    from actors.engines.fake import FakeTokenizer
    from actors.prompts.trim import trim_history

    tokenizer = FakeTokenizer()  # one token per character
    history = "".join(f"line {i:04d}.\n" for i in range(100))  # 1100 characters
    starts = []
    for turn in range(30):
        history += f"turn {turn:03d} said.\n"  # ~18 tokens a turn
        kept = trim_history(tokenizer, history, 900)
        assert 600 <= len(kept) <= 900
        assert history.endswith(kept)
        starts.append(len(history) - len(kept))
    moves = sum(1 for a, b in itertools.pairwise(starts) if a != b)
    assert moves <= 3  # 30 turns of ~18 tokens cross a 300-token step at most twice


def test_history_within_budget_is_unchanged() -> None:
    """A history under the budget comes back as the same string."""
    from actors.engines.fake import FakeTokenizer
    from actors.prompts.trim import trim_history

    text = "user: hi\nassistant: hello\n"
    assert trim_history(FakeTokenizer(), text, 3000) is text
