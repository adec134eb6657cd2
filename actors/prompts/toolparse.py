"""Deterministic parsing of Hammer's tool-call output, whole or as it streams.

Hammer answers with a JSON list of calls, ``[{"name": ..., "arguments": {...}}]``, or
``[]``. In practice the answer may sit in a code fence, be wrapped as
``{"tool_calls": [...]}``, be a bare call object, carry its arguments as a JSON
string, have prose around it, or, because the tool actor caps the output at a few
tokens, stop in the middle: ``[{"name": "take_screensh``. ``parse_tool_output``
reads all of these; ``ToolDecider`` reads the stream and says as early as it can.

Both sit on one small tolerant parser that reads a JSON value from a text that may
stop anywhere, and records what it had read and whether each part was closed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec

from actors.prompts.hammer import (
    TAKE_SCREENSHOT_TOOL,
    ToolDefinition,
    tools_without_parameters,
)
from actors.prompts.hammer import tool_names as names_of
from bus.events import ToolCallSpec

__all__ = [
    "DEFAULT_TOOL_NAMES",
    "ToolDecider",
    "ToolDecision",
    "ToolStatus",
    "parse_tool_output",
]

ToolStatus = Literal["yes", "no"]

DEFAULT_TOOL_NAMES: Final = names_of((TAKE_SCREENSHOT_TOOL,))

# Keys that make an object a call: Hammer's own, and the OpenAI shape
# {"type": "function", "function": {"name": ..., "arguments": "..."}}.
_CALL_KEYS: Final = frozenset({"name", "function", "arguments", "parameters"})
# How many "[" or "{" positions parse_tool_output tries before it gives up: garbage
# full of brackets must not cost quadratic time.
_MAX_STARTS: Final = 64
_WHITESPACE: Final = frozenset(" \t\r\n")
_PLAIN_RUN: Final = {'"': re.compile(r'[^"\\]*'), "'": re.compile(r"[^'\\]*")}
_NUMBER: Final = re.compile(r"-?\d*(?:\.\d*)?(?:[eE][+-]?\d*)?")
_ESCAPES: Final = {
    '"': '"',
    "'": "'",
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
# JSON literals, and Python's, which small models sometimes write instead.
_LITERALS: Final = (
    ("true", True),
    ("false", False),
    ("null", None),
    ("True", True),
    ("False", False),
    ("None", None),
)
# Openers a model may put before the JSON; the decider skips them.
_TAG_OPENER: Final = "<tool_call>"


class ToolDecision(msgspec.Struct, frozen=True):
    """Whether the turn calls a tool, which calls, and the model text it came from.

    ``status`` is ``"yes"`` when the output starts at least one call; ``calls`` may
    then still be empty when a truncated call's name could not be told.
    """

    status: ToolStatus
    calls: tuple[ToolCallSpec, ...] = ()
    raw: str = ""


def parse_tool_output(text: str, tool_names: Sequence[str] = DEFAULT_TOOL_NAMES) -> ToolDecision:
    """Read a complete (or truncated) Hammer answer.

    The first JSON value in ``text`` that has the shape of an answer decides: a list
    (its objects with a name are calls; ``[]`` is "no"), ``{"tool_calls": [...]}``,
    or one call object. Text around it is ignored. A value cut off by the end of the
    text still counts: an open call object means "yes", and a partial name is
    completed to the one tool in ``tool_names`` it is a prefix of, if exactly one;
    an open call with no name yet is the sole tool when only one is known. Empty
    text, prose and anything else without such a value mean "no".

    Args:
        text: the model's output.
        tool_names: the names of the tools the prompt offered.
    """
    names = tuple(tool_names)
    for start in _value_starts(text):
        try:
            node, _ = _parse_value(text, start)
        except _InvalidJSON:
            continue
        answer = _answer(node, names) if node is not None else None
        if answer is not None:
            status, calls = answer
            return ToolDecision(status, calls, text)
    return ToolDecision("no", (), text)


class ToolDecider:
    """Decides from Hammer's streamed output as early as the answer is certain.

    Feed it each text delta; a decision comes back once no continuation in
    Hammer's format could change it, and the same decision on every later call:

    - "no" as soon as the answer is ``[]`` (or ``{"tool_calls": []}``), or the text
      after any code fence or ``<tool_call>`` opener starts with something other
      than ``[`` or ``{``, or the list's first element is not an object. Hammer
      answers start with the JSON, so prose up front means no call; this is where
      the decider is stricter than ``parse_tool_output``, which would look past
      the prose for a list.
    - "yes" as soon as the first call object opens (``[{``), when exactly one tool
      is known and it takes no parameters (the model can then only be calling
      that tool, so there is nothing left to wait for; ``eager=False`` turns this
      off); otherwise once that call's name string is closed and names a known
      tool without parameters; otherwise once the first call object is closed.
    - at the latest when the JSON value closes, deciding as ``parse_tool_output``.

    An early "yes" reports the first call only, with empty arguments when decided
    before they were read; that is exact for the parameterless tools it is used
    with. ``finish()`` decides whatever is left from the whole text.

    Args:
        tools: the tool definitions the prompt offered.
        eager: allow the "yes at ``[{``" rule for a single parameterless tool.
    """

    def __init__(
        self, tools: Sequence[ToolDefinition] = (TAKE_SCREENSHOT_TOOL,), *, eager: bool = True
    ) -> None:
        self._names = names_of(tools)
        self._parameterless = tools_without_parameters(tools)
        sole = self._names[0] if len(self._names) == 1 else None
        self._sole = sole if eager and sole in self._parameterless else None
        self._text = ""
        self._decision: ToolDecision | None = None

    @property
    def decision(self) -> ToolDecision | None:
        """The decision, once made."""
        return self._decision

    @property
    def text(self) -> str:
        """The output fed so far, up to the decision."""
        return self._text

    def feed(self, delta: str) -> ToolDecision | None:
        """Add ``delta``; the decision if it is now certain, else None.

        Once decided, later deltas are ignored and the same decision comes back.
        """
        if self._decision is None:
            # Re-reading the whole text per delta is quadratic, which is nothing at
            # the few tokens the tool actor lets Hammer write.
            self._text += delta
            self._decision = self._decide(self._text)
        return self._decision

    def finish(self) -> ToolDecision:
        """The decision at the end of the stream: the early one, or the whole text's."""
        if self._decision is None:
            self._decision = parse_tool_output(self._text, self._names)
        return self._decision

    def _decide(self, text: str) -> ToolDecision | None:
        start = _body_start(text)
        if start is None:
            return None
        if text[start] not in "[{":
            return ToolDecision("no", (), text)
        try:
            node, _ = _parse_value(text, start)
        except _InvalidJSON:
            return ToolDecision("no", (), text)
        assert node is not None  # text[start] opens a value
        if node.complete:
            answer = _answer(node, self._names)
            if answer is None:
                return ToolDecision("no", (), text)
            status, calls = answer
            return ToolDecision(status, calls, text)
        if node.kind == "array":
            return self._from_list(node, text)
        if node.first_key == "tool_calls":
            calls_node = node.value.get("tool_calls")
            if calls_node is None:
                return None
            if calls_node.kind != "array":
                return ToolDecision("no", (), text)
            return self._from_list(calls_node, text)
        if node.first_key in _CALL_KEYS:
            return self._from_call(node, text)
        return None

    def _from_list(self, array: _Node, text: str) -> ToolDecision | None:
        if not array.value:
            return None
        first = array.value[0]
        if first.kind != "object":
            return ToolDecision("no", (), text)
        return self._from_call(first, text)

    def _from_call(self, call: _Node, text: str) -> ToolDecision | None:
        if self._sole is not None:
            return ToolDecision("yes", (ToolCallSpec(name=self._sole),), text)
        name = _closed_name(call)
        if name is not None and name in self._parameterless:
            return ToolDecision("yes", (ToolCallSpec(name=name),), text)
        if call.complete:
            _, spec = _call_of(call, self._names)
            if spec is not None:
                return ToolDecision("yes", (spec,), text)
        return None


# --- reading the answer -----------------------------------------------------------


def _answer(
    node: _Node, names: tuple[str, ...]
) -> tuple[ToolStatus, tuple[ToolCallSpec, ...]] | None:
    """The decision a parsed value stands for; None if it is not shaped like an answer."""
    if node.kind == "array":
        return _answer_list(node, names)
    if node.kind != "object":
        return None
    calls_node = node.value.get("tool_calls")
    if calls_node is not None:
        return _answer_list(calls_node, names) if calls_node.kind == "array" else ("no", ())
    if node.first_key == "tool_calls":
        return ("no", ())
    if node.first_key in _CALL_KEYS or not _CALL_KEYS.isdisjoint(node.value):
        is_call, spec = _call_of(node, names)
        if is_call:
            return ("yes", (spec,) if spec is not None else ())
    return None


def _answer_list(
    array: _Node, names: tuple[str, ...]
) -> tuple[ToolStatus, tuple[ToolCallSpec, ...]]:
    started = False
    calls: list[ToolCallSpec] = []
    for item in array.value:
        if item.kind != "object":
            continue
        is_call, spec = _call_of(item, names)
        started = started or is_call
        if spec is not None:
            calls.append(spec)
    return ("yes" if started else "no", tuple(calls))


def _call_of(obj: _Node, names: tuple[str, ...]) -> tuple[bool, ToolCallSpec | None]:
    """Whether ``obj`` is a call, and the call when its name is known.

    A closed object is a call only with a name. An open one (the output stopped
    inside it) is always a call: Hammer writes nothing else inside its list.
    """
    source = _call_source(obj)
    name_node = source.value.get("name")
    if name_node is None or name_node.kind != "string":
        if obj.complete:
            return False, None
        if name_node is None and len(names) == 1:
            return True, ToolCallSpec(name=names[0], arguments=_arguments(source))
        return True, None
    name = name_node.value if name_node.complete else _complete_name(name_node.value, names)
    if not name:
        return (not obj.complete), None
    return True, ToolCallSpec(name=name, arguments=_arguments(source))


def _call_source(obj: _Node) -> _Node:
    """The object holding name and arguments: ``obj``, or its OpenAI-style ``function``."""
    function = obj.value.get("function")
    if "name" not in obj.value and function is not None and function.kind == "object":
        return function
    return obj


def _closed_name(obj: _Node) -> str | None:
    name_node = _call_source(obj).value.get("name")
    if name_node is not None and name_node.kind == "string" and name_node.complete:
        return str(name_node.value)
    return None


def _complete_name(partial: str, names: tuple[str, ...]) -> str:
    matches = [name for name in names if name.startswith(partial)]
    return matches[0] if len(matches) == 1 else partial


def _arguments(source: _Node) -> dict[str, object]:
    node = source.value.get("arguments")
    if node is None:
        node = source.value.get("parameters")
    if node is None:
        return {}
    if node.kind == "string":
        # Arguments given as a JSON string, possibly cut off too.
        try:
            node, _ = _parse_value(node.value, 0)
        except _InvalidJSON:
            return {}
    if node is None or node.kind != "object":
        return {}
    return _plain(node)


def _plain(node: _Node) -> Any:
    if node.kind == "object":
        return {key: _plain(value) for key, value in node.value.items()}
    if node.kind == "array":
        return [_plain(item) for item in node.value]
    return node.value


def _value_starts(text: str) -> list[int]:
    starts = [i for i, ch in enumerate(text) if ch in "[{"]
    return starts[:_MAX_STARTS]


def _body_start(text: str) -> int | None:
    """Where the answer starts after whitespace, code fence and tag openers.

    None while that is not known yet (the text so far could still be an opener).
    """
    n = len(text)
    i = _skip_ws(text, 0)
    if i < n and text[i] == "`":
        j = i
        while j < n and text[j] == "`":
            j += 1
        if j - i >= 3:
            # A language tag such as "json" may follow the fence.
            while j < n and (text[j].isalnum() or text[j] in "_+-."):
                j += 1
        if j == n:
            return None
        i = _skip_ws(text, j)
    if i < n and text[i] == "<":
        rest = text[i : i + len(_TAG_OPENER)]
        if _TAG_OPENER.startswith(rest) and len(rest) < len(_TAG_OPENER):
            return None
        if rest == _TAG_OPENER:
            i = _skip_ws(text, i + len(_TAG_OPENER))
    return i if i < n else None


# --- a JSON reader for text that may stop anywhere --------------------------------


class _InvalidJSON(Exception):
    """The text is not the beginning of any JSON value."""


@dataclass(slots=True)
class _Node:
    """A value read so far; ``complete`` once its closing character was read.

    Objects hold ``dict[str, _Node]`` (only keys whose string was closed), arrays
    ``list[_Node]``, scalars their Python value (a string's text so far).
    """

    kind: Literal["object", "array", "string", "number", "literal"]
    value: Any
    complete: bool = False
    first_key: str | None = field(default=None)


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WHITESPACE:
        i += 1
    return i


def _parse_value(text: str, i: int) -> tuple[_Node | None, int]:
    """The value starting at ``i`` (after whitespace), or None if the text ends first.

    Raises:
        _InvalidJSON: the text there cannot begin a value.
    """
    i = _skip_ws(text, i)
    if i >= len(text):
        return None, i
    ch = text[i]
    if ch == "{":
        return _parse_object(text, i + 1)
    if ch == "[":
        return _parse_array(text, i + 1)
    if ch in "\"'":
        return _parse_string(text, i + 1, ch)
    if ch == "-" or "0" <= ch <= "9":
        return _parse_number(text, i)
    for word, value in _LITERALS:
        if text.startswith(word, i):
            return _Node("literal", value, complete=True), i + len(word)
        if word.startswith(text[i : i + len(word)]) and i + len(word) > len(text):
            return _Node("literal", value), len(text)
    raise _InvalidJSON(i)


def _parse_string(text: str, i: int, quote: str) -> tuple[_Node, int]:
    n = len(text)
    plain = _PLAIN_RUN[quote]
    out: list[str] = []
    while i < n:
        run = plain.match(text, i)
        assert run is not None  # the pattern matches the empty string
        out.append(run.group())
        i = run.end()
        if i >= n:
            break
        if text[i] == quote:
            return _Node("string", "".join(out), complete=True), i + 1
        # A backslash; an escape cut off by the end of the text is dropped.
        if i + 1 >= n:
            break
        escape = text[i + 1]
        if escape == "u":
            digits = text[i + 2 : i + 6]
            if len(digits) < 4:
                break
            if not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise _InvalidJSON(i)
            out.append(chr(int(digits, 16)))
            i += 6
        elif escape in _ESCAPES:
            out.append(_ESCAPES[escape])
            i += 2
        else:
            raise _InvalidJSON(i)
    return _Node("string", "".join(out)), n


def _parse_number(text: str, i: int) -> tuple[_Node, int]:
    match = _NUMBER.match(text, i)
    assert match is not None  # the pattern matches the empty string
    literal, end = match.group(), match.end()
    value: int | float | None
    try:
        value = int(literal)
    except ValueError:
        try:
            value = float(literal)
        except ValueError:
            value = None
    if end >= len(text):
        return _Node("number", value), end
    if value is None:
        raise _InvalidJSON(i)
    return _Node("number", value, complete=True), end


def _parse_object(text: str, i: int) -> tuple[_Node, int]:
    n = len(text)
    node = _Node("object", {})
    while True:
        i = _skip_ws(text, i)
        if i >= n:
            return node, n
        if text[i] == "}":
            # Also accepts a trailing comma, which models sometimes write.
            node.complete = True
            return node, i + 1
        if text[i] not in "\"'":
            raise _InvalidJSON(i)
        key, i = _parse_string(text, i + 1, text[i])
        if not key.complete:
            return node, n
        if node.first_key is None:
            node.first_key = key.value
        i = _skip_ws(text, i)
        if i >= n:
            return node, n
        if text[i] != ":":
            raise _InvalidJSON(i)
        value, i = _parse_value(text, i + 1)
        if value is None:
            return node, n
        node.value[key.value] = value
        if not value.complete:
            return node, n
        i = _skip_ws(text, i)
        if i >= n:
            return node, n
        if text[i] == "}":
            node.complete = True
            return node, i + 1
        if text[i] != ",":
            raise _InvalidJSON(i)
        i += 1


def _parse_array(text: str, i: int) -> tuple[_Node, int]:
    n = len(text)
    node = _Node("array", [])
    while True:
        i = _skip_ws(text, i)
        if i >= n:
            return node, n
        if text[i] == "]":
            node.complete = True
            return node, i + 1
        value, i = _parse_value(text, i)
        if value is None:
            return node, n
        node.value.append(value)
        if not value.complete:
            return node, n
        i = _skip_ws(text, i)
        if i >= n:
            return node, n
        if text[i] == "]":
            node.complete = True
            return node, i + 1
        if text[i] != ",":
            raise _InvalidJSON(i)
        i += 1
