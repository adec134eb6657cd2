"""The chat prompt, built as stable segments so the prefix cache can reuse them.

A turn's prompt is, in the model's own chat template:

1. a system message with the persona (shared by every turn of the session, and by
   every session with the same persona);
2. a second system message with the conversation so far, trimmed to its newest
   ``history_max_tokens`` tokens (omitted when there is no history);
3. the user message, trimmed to its first ``user_utt_max_tokens`` tokens;
4. the generation prompt.

``ChatPrompt`` carries the text of the prompt up to the end of segments 1 and 2, and
the warm helpers return exactly those texts, so a warm request primes the very
tokens a later turn starts with.
"""

from __future__ import annotations

from typing import Final

import msgspec

from actors.engines.base import Tokenizer
from actors.prompts.sanitize import neutralize_control_tokens
from actors.prompts.trim import (
    DEFAULT_HISTORY_MAX_TOKENS,
    DEFAULT_USER_UTT_MAX_TOKENS,
    trim_history,
    trim_to_tokens,
)

__all__ = [
    "HISTORY_LABEL",
    "ChatPrompt",
    "build_chat_prompt",
    "history_warm_prompt",
    "persona_warm_prompt",
]

HISTORY_LABEL: Final = "Conversation so far:\n"

# The user message used to render a warm prompt's context; only the text before it
# is returned, so its content never reaches the engine.
_PROBE: Final = "\x00probe\x00"

Message = dict[str, str]


class ChatPrompt(msgspec.Struct, frozen=True, kw_only=True):
    """One chat turn's prompt and its two cacheable prefixes.

    ``text.startswith(history_prefix)`` and ``history_prefix.startswith(persona_prefix)``
    always hold; with no history, ``history_prefix == persona_prefix``.
    """

    text: str
    persona_prefix: str
    history_prefix: str


def build_chat_prompt(
    tokenizer: Tokenizer,
    *,
    persona_text: str,
    history_text: str,
    user_utterance: str,
    history_max_tokens: int = DEFAULT_HISTORY_MAX_TOKENS,
    user_utt_max_tokens: int = DEFAULT_USER_UTT_MAX_TOKENS,
) -> ChatPrompt:
    """The full chat prompt of one turn, with its persona and history prefixes.

    Args:
        tokenizer: the chat model's tokenizer; its chat template renders the prompt.
        persona_text: the system persona (see ``compose_persona``).
        history_text: the transcript so far; blank means no history segment.
        user_utterance: what the user just said.
        history_max_tokens: token budget of the history; its newest tokens are kept.
        user_utt_max_tokens: token budget of the utterance; its first tokens are kept.

    Raises:
        ValueError: a token budget is negative.
    """
    head = _head(tokenizer, persona_text, history_text, history_max_tokens)
    utterance = trim_to_tokens(
        tokenizer,
        neutralize_control_tokens(tokenizer, user_utterance.strip()),
        user_utt_max_tokens,
        "start",
    )
    text = _render(tokenizer, [*head, {"role": "user", "content": utterance}], generation=True)
    persona_prefix = _prefix(tokenizer, head[:1], text, "")
    history_prefix = (
        _prefix(tokenizer, head, text, persona_prefix) if len(head) > 1 else persona_prefix
    )
    return ChatPrompt(text=text, persona_prefix=persona_prefix, history_prefix=history_prefix)


def persona_warm_prompt(tokenizer: Tokenizer, persona_text: str) -> str:
    """The prompt text that every chat turn with ``persona_text`` starts with.

    Args:
        tokenizer: the chat model's tokenizer.
        persona_text: the system persona.
    """
    head = _head(tokenizer, persona_text, "", 0)
    return _prefix(tokenizer, head, _probe_render(tokenizer, head), "")


def history_warm_prompt(
    tokenizer: Tokenizer,
    persona_text: str,
    history_text: str,
    history_max_tokens: int = DEFAULT_HISTORY_MAX_TOKENS,
) -> str:
    """The prompt text that a chat turn with this persona and history starts with.

    Equal to ``build_chat_prompt(...).history_prefix`` for the same arguments.

    Args:
        tokenizer: the chat model's tokenizer.
        persona_text: the system persona.
        history_text: the transcript so far.
        history_max_tokens: token budget of the history, as in ``build_chat_prompt``.

    Raises:
        ValueError: ``history_max_tokens`` is negative.
    """
    head = _head(tokenizer, persona_text, history_text, history_max_tokens)
    probe = _probe_render(tokenizer, head)
    persona_prefix = _prefix(tokenizer, head[:1], probe, "")
    return _prefix(tokenizer, head, probe, persona_prefix) if len(head) > 1 else persona_prefix


def _head(
    tokenizer: Tokenizer, persona_text: str, history_text: str, history_max_tokens: int
) -> list[Message]:
    """The persona message and, when there is history, the history message."""
    head = [{"role": "system", "content": neutralize_control_tokens(tokenizer, persona_text)}]
    history = trim_history(
        tokenizer, neutralize_control_tokens(tokenizer, history_text.strip()), history_max_tokens
    ).strip()
    if history:
        head.append({"role": "system", "content": HISTORY_LABEL + history})
    return head


def _render(tokenizer: Tokenizer, messages: list[Message], *, generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _probe_render(tokenizer: Tokenizer, head: list[Message]) -> str:
    """A full render of ``head`` followed by a stand-in user turn."""
    return _render(tokenizer, [*head, {"role": "user", "content": _PROBE}], generation=True)


def _prefix(tokenizer: Tokenizer, head: list[Message], full: str, floor: str) -> str:
    """The part of ``full`` that renders ``head`` and does not depend on what follows.

    For templates like ChatML, rendering ``head`` alone gives a prefix of ``full``
    that includes the closing markup of its last message. Templates that move or
    rewrite messages (a system prompt folded into the last user turn, say) do not;
    then the prefix ends right after the last message's content where ``full``
    shows it verbatim, and failing that it is ``floor``, the previous segment's
    prefix: still a correct prefix, only a shorter cache hit.
    """
    rendered = _render(tokenizer, head, generation=False)
    if rendered.startswith(floor) and full.startswith(rendered):
        return rendered
    content = head[-1]["content"]
    at = full.find(content, len(floor)) if content else -1
    if at < 0:
        return floor
    return full[: at + len(content)]
