"""The chat prompt, built as stable segments so the prefix cache can reuse them.

A turn's prompt is, in the model's own chat template:

1. a system message with the persona (shared by every turn of the session, and by
   every session with the same persona);
2. a second system message with the conversation so far, trimmed to at most
   ``history_max_tokens`` tokens by dropping whole lines from its front in steps
   (omitted when there is no history);
3. the user message, trimmed to its first ``user_utt_max_tokens`` tokens;
4. the generation prompt.

Two paths build it. The text path (``build_chat_prompt``) renders and returns text,
with the persona and history prefixes as text: it is the reference, and what the
tests compare with. The ids path (``ChatPrompts``) is what the ChatActor runs: the
same rendering, its ids assembled from the units a ``UnitEncoder`` keeps, so a turn
encodes only its new lines and the utterance; its prefixes are ids too, for warm
requests. Both give the same ids, byte for byte (``tests/unit/prompts/test_units.py``).
"""

from __future__ import annotations

from typing import Final

import msgspec

from actors.engines.base import Tokenizer
from actors.prompts.sanitize import ControlTokens, neutralize_control_tokens
from actors.prompts.trim import (
    DEFAULT_HISTORY_MAX_TOKENS,
    DEFAULT_USER_UTT_MAX_TOKENS,
    fits_by_bytes,
    trim_history,
    trim_to_tokens,
)
from actors.prompts.units import UnitEncoder, trim_history_cached

__all__ = [
    "HISTORY_LABEL",
    "ChatPrompt",
    "ChatPrompts",
    "build_chat_prompt",
    "history_warm_prompt",
    "persona_warm_prompt",
]

HISTORY_LABEL: Final = "Conversation so far:\n"

# The stand-in content of a message that follows a prefix; only the text before it is
# used, so it never reaches the engine.
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
        history_max_tokens: token budget of the history (see ``trim_history``).
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
    text = _render(tokenizer, [*head, _user(utterance)], generation=True)
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


class ChatPrompts:
    """The ids path: chat prompts and their prefixes as token ids, from cached units.

    Per turn it defuses and trims the new text, renders the template once and looks
    the prompt's units up in the encoder's cache; only units never seen before are
    encoded (the utterance, the history's new lines), long ones off the event loop.
    Trimming counts the history's tokens from the cached ids of its lines.

    Args:
        encoder: the chat model's unit encoder.
        history_max_tokens: token budget of the history.
        user_utt_max_tokens: token budget of the utterance.
    """

    def __init__(
        self,
        encoder: UnitEncoder,
        *,
        history_max_tokens: int = DEFAULT_HISTORY_MAX_TOKENS,
        user_utt_max_tokens: int = DEFAULT_USER_UTT_MAX_TOKENS,
    ) -> None:
        self.encoder = encoder
        self._tokenizer = encoder.tokenizer
        self._controls = ControlTokens(encoder.tokenizer)
        self._history_max = history_max_tokens
        self._utterance_max = user_utt_max_tokens

    async def turn(self, *, persona_text: str, history_text: str, user_utterance: str) -> list[int]:
        """The ids of ``build_chat_prompt(...).text``."""
        utterance = self._controls.neutralize(user_utterance.strip())
        if not fits_by_bytes(utterance, self._utterance_max):
            utterance = await self.encoder.run(
                trim_to_tokens, self._tokenizer, utterance, self._utterance_max, "start"
            )
        # The utterance is a unit of the prompt in the templates we serve (a whole
        # message between markup): encoded with the history's new lines.
        head = await self._head(persona_text, history_text, prefetch=(utterance,))
        return await self.encoder.encode(
            _render(self._tokenizer, [*head, _user(utterance)], generation=True)
        )

    async def history_prefix(self, *, persona_text: str, history_text: str) -> list[int]:
        """Ids that every turn with this persona and history starts with."""
        head = await self._head(persona_text, history_text)
        if len(head) == 1:
            return await self.persona_prefix(persona_text=persona_text)
        return await self._common_prefix([[*head, _user(_PROBE)]])

    async def persona_prefix(self, *, persona_text: str) -> list[int]:
        """Ids that every turn with this persona starts with, with or without history."""
        persona = self._persona(persona_text)
        history = {"role": "system", "content": HISTORY_LABEL + _PROBE}
        return await self._common_prefix([[persona, _user(_PROBE)], [persona, history, _user("")]])

    async def _common_prefix(self, conversations: list[list[Message]]) -> list[int]:
        """The units that every conversation's prompt has before its first stand-in.

        Each conversation is rendered and cut where the content of the message holding
        the first stand-in starts; a cut that may merge with what follows loses its
        last unit (``UnitEncoder.prefix_units``); the conversations' common units are
        kept, so the prefix is one of every real prompt of those shapes.
        """
        encoder = self.encoder
        common: list[str] | None = None
        for messages in conversations:
            text = _render(self._tokenizer, messages, generation=True)
            at = text.find(_PROBE)
            if at < 0:
                return []  # the template rewrote the content: nothing is known to be safe
            lead = next(m["content"] for m in messages if _PROBE in m["content"]).split(_PROBE)[0]
            if lead and text[at - len(lead) : at] == lead:
                at -= len(lead)
            if encoder.level == "whole":
                # Nothing is known to cut cleanly: the prefix text's own ids, a best
                # effort that the engine's cache reuses up to where they differ.
                return await encoder.encode(text[:at])
            units = encoder.prefix_units(text[:at])
            if common is None:
                common = units
                continue
            size = 0
            for mine, theirs in zip(common, units, strict=False):
                if mine != theirs:
                    break
                size += 1
            common = common[:size]
        return [token for ids in await encoder.ids_of(common or []) for token in ids]

    def _persona(self, persona_text: str) -> Message:
        return {"role": "system", "content": self._controls.neutralize(persona_text)}

    async def _head(
        self, persona_text: str, history_text: str, prefetch: tuple[str, ...] = ()
    ) -> list[Message]:
        head = [self._persona(persona_text)]
        history = await trim_history_cached(
            self.encoder,
            self._controls.neutralize(history_text.strip()),
            self._history_max,
            prefetch,
        )
        if history.strip():
            head.append({"role": "system", "content": HISTORY_LABEL + history.strip()})
        return head


def _user(content: str) -> Message:
    return {"role": "user", "content": content}


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
    return _render(tokenizer, [*head, _user(_PROBE)], generation=True)


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
