"""The Hammer 2.1 tool-call prompt.

Hammer reads one user message made of bracketed sections; the section markers are
its input format and must stay as they are. The instruction, tool list and format
sections never change between turns, so they come first and stay hot in the prefix
cache; the per-turn parts (recent history, then the query) come last. The query is
the last section, after the last ``[BEGIN OF QUERY]`` marker.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

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
    "TAKE_SCREENSHOT_TOOL",
    "ToolDefinition",
    "ToolPrompts",
    "build_tool_prompt",
    "tool_names",
    "tools_without_parameters",
]

ToolDefinition = Mapping[str, Any]

TAKE_SCREENSHOT_TOOL: Final[ToolDefinition] = {
    "name": "take_screenshot",
    "description": (
        "Capture the user's screen so the assistant can see it. Use it when the user "
        "asks the assistant to look at, check, see, read or react to something that is "
        "on their screen right now."
    ),
    "parameters": {"type": "object", "properties": {}, "required": []},
}

_TASK_INSTRUCTION: Final = (
    "You are the tool router of a voice assistant. Read the user's latest message in "
    "the query section and decide whether answering it needs one of the available "
    "tools. Call a tool only when the user is clearly asking for what that tool does; "
    "earlier conversation is context, not a request. Greetings, small talk, opinions, "
    "questions the assistant can answer by talking, and anything the tools cannot do "
    "need no tool."
)

_FORMAT_INSTRUCTION: Final = (
    "Answer with a JSON list and nothing else: no explanation, no prose, no code "
    'fence. Each element is one call, {"name": "<tool name>", "arguments": '
    '{"<parameter>": <value>}}, with "arguments" set to {} when the tool takes no '
    "parameters. When no tool is needed, answer with the empty list []."
)


def build_tool_prompt(
    tokenizer: Tokenizer,
    *,
    user_utterance: str,
    history_text: str = "",
    history_max_tokens: int = DEFAULT_HISTORY_MAX_TOKENS,
    user_utt_max_tokens: int = DEFAULT_USER_UTT_MAX_TOKENS,
    tools: Sequence[ToolDefinition] = (TAKE_SCREENSHOT_TOOL,),
) -> str:
    """The full Hammer prompt for one turn, rendered with the generation prompt.

    This is the text path, the reference for ``ToolPrompts``.

    Args:
        tokenizer: the tool model's tokenizer; its chat template wraps the prompt as
            one user message.
        user_utterance: what the user just said; its first ``user_utt_max_tokens``
            tokens are kept.
        history_text: the transcript so far, trimmed to ``history_max_tokens``
            (``trim_history``); a blank history leaves its section out.
        history_max_tokens: token budget of the history.
        user_utt_max_tokens: token budget of the utterance.
        tools: the tool definitions offered to the model.

    Raises:
        ValueError: a token budget is negative.
    """
    history = trim_history(
        tokenizer, neutralize_control_tokens(tokenizer, history_text.strip()), history_max_tokens
    ).strip()
    query = trim_to_tokens(
        tokenizer,
        neutralize_control_tokens(tokenizer, user_utterance.strip()),
        user_utt_max_tokens,
        "start",
    )
    return _render(tokenizer, _head_sections(tools), history, query)


class ToolPrompts:
    """The ids path of ``build_tool_prompt``: the Hammer prompt's ids from cached units.

    The instruction, tool and format sections are the same for every session, so their
    units are encoded once per process; the history's lines once per session (as the
    ChatActor's, see ``ChatPrompts``); a turn encodes its query.

    Args:
        encoder: the tool model's unit encoder.
        history_max_tokens: token budget of the history.
        user_utt_max_tokens: token budget of the utterance.
        tools: the tool definitions offered to the model.
    """

    def __init__(
        self,
        encoder: UnitEncoder,
        *,
        history_max_tokens: int = DEFAULT_HISTORY_MAX_TOKENS,
        user_utt_max_tokens: int = DEFAULT_USER_UTT_MAX_TOKENS,
        tools: Sequence[ToolDefinition] = (TAKE_SCREENSHOT_TOOL,),
    ) -> None:
        self.encoder = encoder
        self._tokenizer = encoder.tokenizer
        self._controls = ControlTokens(encoder.tokenizer)
        self._history_max = history_max_tokens
        self._utterance_max = user_utt_max_tokens
        self._head = _head_sections(tools)

    async def turn(self, *, user_utterance: str, history_text: str = "") -> list[int]:
        """The ids of ``build_tool_prompt(...)`` for the same arguments."""
        encoder = self.encoder
        query = self._controls.neutralize(user_utterance.strip())
        if not fits_by_bytes(query, self._utterance_max):
            query = await encoder.run(
                trim_to_tokens, self._tokenizer, query, self._utterance_max, "start"
            )
        history = self._controls.neutralize(history_text.strip())
        # In the prompt a section's body ends with a newline: its last line and the query
        # are units with it. Encoded with the history's new lines: one round a turn.
        last = history.rsplit("\n", 1)[-1]
        history = await trim_history_cached(
            encoder, history, self._history_max, (f"{last}\n", f"{query}\n")
        )
        return await encoder.encode(_render(self._tokenizer, self._head, history.strip(), query))


def tool_names(tools: Sequence[ToolDefinition]) -> tuple[str, ...]:
    """The names of ``tools``, in order."""
    return tuple(str(tool["name"]) for tool in tools)


def tools_without_parameters(tools: Sequence[ToolDefinition]) -> frozenset[str]:
    """The names of the tools in ``tools`` whose schema declares no parameters."""
    return frozenset(str(tool["name"]) for tool in tools if not _parameter_names(tool))


def _parameter_names(tool: ToolDefinition) -> list[str]:
    """The declared parameters, in JSON-schema form or xLAM's flat form."""
    params = tool.get("parameters") or {}
    if params.get("type") == "object" or "properties" in params:
        return list(params.get("properties") or {})
    return list(params)


def _section(name: str, body: str) -> str:
    return f"[BEGIN OF {name}]\n{body}\n[END OF {name}]"


def _head_sections(tools: Sequence[ToolDefinition]) -> list[str]:
    """The sections every turn shares, in the order they come: cached, hot, first."""
    return [
        _section("TASK INSTRUCTION", _TASK_INSTRUCTION),
        _section("AVAILABLE TOOLS", json.dumps([dict(tool) for tool in tools])),
        _section("FORMAT INSTRUCTION", _FORMAT_INSTRUCTION),
    ]


def _render(tokenizer: Tokenizer, head: list[str], history: str, query: str) -> str:
    sections = list(head)
    if history:
        sections.append(_section("RECENT CONVERSATION", history))
    sections.append(_section("QUERY", query))
    content = "\n\n".join(sections) + "\n\n"
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
