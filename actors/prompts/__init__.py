"""Prompt building for the actors: trimming, persona, chat and Hammer prompts, tool parsing."""

from actors.prompts.chat import (
    ChatPrompt,
    build_chat_prompt,
    history_warm_prompt,
    persona_warm_prompt,
)
from actors.prompts.hammer import TAKE_SCREENSHOT_TOOL, build_tool_prompt
from actors.prompts.persona import compose_persona
from actors.prompts.toolparse import ToolDecider, ToolDecision, parse_tool_output
from actors.prompts.trim import trim_to_tokens

__all__ = [
    "TAKE_SCREENSHOT_TOOL",
    "ChatPrompt",
    "ToolDecider",
    "ToolDecision",
    "build_chat_prompt",
    "build_tool_prompt",
    "compose_persona",
    "history_warm_prompt",
    "parse_tool_output",
    "persona_warm_prompt",
    "trim_to_tokens",
]
