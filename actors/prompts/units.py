"""Prompt text to token ids, one unit at a time, each unit encoded once and kept.

A Hugging Face fast tokenizer cuts its input at added (special) tokens before
anything else, and the byte-level BPE tokenizers we serve (Qwen2's, Llama 3's, the
tiny model's) start a new pre-token after every newline that is followed by a
non-space character. Cut a prompt at those places and the ids of the whole are the
ids of the units, concatenated. A chat prompt is made of a few such units per
message line: the persona's, the history's lines, the utterance, the template's
markup. Across a session's turns almost all of them repeat, so each is encoded once
and its ids are kept in an LRU (bounded by tokens); a new turn encodes only the new
lines and the utterance, and the prompt's ids are assembled from the cache.

Whether a tokenizer really splits like that is checked once, when the encoder is
built, on probe texts made to break it (punctuation before a newline, digits,
quotes, contractions, emoji, CJK, blank and indented lines): the encoder then cuts at
newlines and special tokens (``"lines"``), at special tokens only (``"specials"``),
or not at all (``"whole"``, which is the plain text path, off the event loop).
``tests/unit/prompts/test_units.py`` pins, on the real ChatML and Llama 3 chat
templates, that the ids are byte for byte those of encoding the whole text.

Threads: encoding runs in Rust with the GIL released (``encode_batch``; the plain
``encode`` holds it), so long encodes go to a thread pool and the event loop stays
free, and several sessions' cold histories encode in parallel. Short ones run inline,
where a thread hop would cost more than the encode. Everything else (cutting text,
cache lookups, concatenation) is Python on the loop, tens of microseconds a turn.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Final, Literal

from actors.prompts.trim import fits_by_bytes, history_cut, line_units, trim_tokens_stepped

__all__ = [
    "INLINE_CHARS",
    "SplitLevel",
    "UnitEncoder",
    "batch_encoder",
    "probe_split_level",
    "prompt_pool",
    "trim_history_cached",
]

SplitLevel = Literal["lines", "specials", "whole"]

# Misses up to this many characters in all are encoded on the loop (about 50 tokens,
# tens of microseconds); more go to the pool.
INLINE_CHARS: Final = 256
# Threads encoding prompts: a burst of sessions' cold histories in parallel, on at
# most this many cores (encoding releases the GIL), one core left to the event loop.
PROMPT_THREADS: Final = 4
# The cache's bound in tokens: a 1,500-token history per session for ~1,300 sessions.
MAX_CACHED_TOKENS: Final = 2_000_000

# Lines chosen to break a tokenizer that merges across a newline: every kind of
# character a line can end or start with. Each probe text is checked whole, cut at
# its newlines, and cut at its special tokens.
_PROBE_LINES: Final = (
    "User: hey, are you there? It's 3:45 pm — already!",
    "Assistant: 2024",
    "User: ok...",
    'Assistant: "quoted" (and parenthesized)',
    "User: emoji 🎉🎉",
    "Assistant: 日本語のテキスト。",
    "User: trailing spaces   ",
    "'s a contraction up front, and [brackets]",
    "12 digits first, then -dashes- and *stars*",
    "",
    "  an indented line after a blank one",
    "\t tab, then \r\nwindows newline",
    '[{"name": "take_screenshot", "arguments": {}}]',
    "[END OF RECENT CONVERSATION]",
    "naïve café déjà vu",
)


BatchEncode = Callable[[Sequence[str]], list[list[int]]]


def prompt_pool(name: str) -> ThreadPoolExecutor:
    """The thread pool an actor encodes its prompts in."""
    return ThreadPoolExecutor(
        max_workers=max(1, min(PROMPT_THREADS, (os.cpu_count() or 2) - 1)),
        thread_name_prefix=f"{name}-prompt",
    )


def batch_encoder(tokenizer: Any) -> BatchEncode:
    """A function that encodes several texts at once, with no special tokens added.

    A Hugging Face fast tokenizer's Rust ``encode_batch_fast`` (or ``encode_batch``)
    releases the GIL while it runs; other tokenizers are called text by text.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    fast = getattr(backend, "encode_batch_fast", None) or getattr(backend, "encode_batch", None)
    if callable(fast):

        def encode_rust(texts: Sequence[str]) -> list[list[int]]:
            return [encoding.ids for encoding in fast(list(texts), add_special_tokens=False)]

        return encode_rust

    def encode_each(texts: Sequence[str]) -> list[list[int]]:
        return [list(tokenizer.encode(text, add_special_tokens=False)) for text in texts]

    return encode_each


def probe_split_level(tokenizer: Any, encode: BatchEncode) -> SplitLevel:
    """How finely prompts can be cut for ``tokenizer`` with ids unchanged.

    Args:
        tokenizer: the tokenizer (its ``encode`` is the reference).
        encode: the batch encoder the units will be encoded with.
    """
    specials = _special_pattern(tokenizer)
    texts = _probe_texts(tokenizer)

    def reference(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    def splits_exactly(cut: Callable[[str], list[str]]) -> bool:
        for text in texts:
            units = cut(text)
            if [i for ids in encode(units) for i in ids] != reference(text):
                return False
        return True

    if specials is not None and splits_exactly(lambda text: _units(text, specials, True)):
        return "lines"
    if specials is None and splits_exactly(line_units):
        return "lines"
    if specials is not None and splits_exactly(lambda text: _units(text, specials, False)):
        return "specials"
    return "whole"


class UnitEncoder:
    """Token ids of prompt text from a cache of per-unit ids, for one tokenizer.

    Used from one event loop; the pool only ever runs the encode function on texts it
    is handed, so the cache needs no lock.

    Args:
        tokenizer: the serving model's tokenizer.
        pool: where long encodes run; ``None`` encodes everything inline (tests, tools).
        max_cached_tokens: the cache's bound.
    """

    def __init__(
        self,
        tokenizer: Any,
        pool: Executor | None = None,
        *,
        max_cached_tokens: int = MAX_CACHED_TOKENS,
        inline_chars: int = INLINE_CHARS,
    ) -> None:
        self.tokenizer = tokenizer
        self._pool = pool
        self._encode = batch_encoder(tokenizer)
        if not self._exact_batch():
            self._encode = batch_encoder(_PlainEncode(tokenizer))
        self.level: SplitLevel = probe_split_level(tokenizer, self._encode)
        self._specials = _special_pattern(tokenizer)
        self._cache: OrderedDict[str, list[int]] = OrderedDict()
        self._cached_tokens = 0
        self._max_cached_tokens = max_cached_tokens
        self._inline_chars = inline_chars
        # Units being encoded now: a burst of sessions that share a persona encodes it once.
        self._pending: dict[str, asyncio.Future[list[int]]] = {}
        self.encoded_tokens = 0  # tokens encoded so far (cache misses), for tests and stats

    @property
    def cached_tokens(self) -> int:
        return self._cached_tokens

    def units(self, text: str) -> list[str]:
        """``text`` cut where this tokenizer's ids are unchanged by the cut."""
        if self.level == "whole" or not text:
            return [text] if text else []
        if self._specials is None:
            return line_units(text)
        return _units(text, self._specials, self.level == "lines")

    def ends_at_boundary(self, text: str) -> bool:
        """Whether the last unit of ``text`` ends where any continuation cuts too.

        True when ``text`` ends with a special token: text after it always starts a
        new unit. A prefix that ends elsewhere may merge with what follows.
        """
        if self.level == "whole" or self._specials is None:
            return False
        # The last special token that ends within the text's last 64 characters.
        ends = [m.end() for m in self._specials.finditer(text, max(0, len(text) - 64))]
        return bool(ends) and ends[-1] == len(text)

    async def encode(self, text: str) -> list[int]:
        """The ids of ``text``, as ``tokenizer.encode(text, add_special_tokens=False)``."""
        return _concat(await self.ids_of(self.units(text)))

    def prefix_units(self, text: str) -> list[str]:
        """The units that every text starting with ``text`` starts with.

        The units of ``text`` but its last, which is kept only when ``text`` ends at a
        special token: the last unit of a prefix may merge with what follows it. At
        the ``"whole"`` level nothing is known to be shared: empty.
        """
        units = self.units(text)
        if units and not self.ends_at_boundary(text):
            units.pop()
        return units

    async def ids_of(self, units: Sequence[str]) -> list[list[int]]:
        """The ids of each unit: cached, being encoded, or encoded now.

        Missing units are encoded in one batch: inline when short, in the pool when
        long, and cached.
        """
        found: list[list[int] | None] = []
        missing: dict[str, None] = {}
        waiting: dict[str, asyncio.Future[list[int]]] = {}
        cache = self._cache
        for unit in units:
            ids = cache.get(unit)
            if ids is not None:
                cache.move_to_end(unit)
            elif unit in self._pending:
                waiting[unit] = self._pending[unit]
            else:
                missing[unit] = None
            found.append(ids)
        if missing:
            await self._encode_missing(list(missing))
        if waiting:
            # Another turn is encoding these; should it fail or be cancelled, encode
            # them here after all. asyncio.wait, not gather: a cancelled waiter must
            # not cancel the futures other turns share.
            await asyncio.wait(set(waiting.values()))
            retry = [unit for unit in waiting if unit not in self._cache]
            if retry:
                await self._encode_missing(retry)
        if not missing and not waiting:
            return found  # type: ignore[return-value]
        return [
            ids if ids is not None else self._lookup(unit)
            for unit, ids in zip(units, found, strict=True)
        ]

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` in the pool (or inline without one): text work too long for the loop."""
        if self._pool is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _lookup(self, unit: str) -> list[int]:
        ids = self._cache.get(unit)
        if ids is None:  # evicted between encode and read: a cache far too small
            ids = self._encode([unit])[0]
        return ids

    async def _encode_missing(self, texts: list[str]) -> None:
        loop = asyncio.get_running_loop()
        futures = {text: loop.create_future() for text in texts}
        self._pending.update(futures)
        try:
            if self._pool is None or sum(map(len, texts)) <= self._inline_chars:
                encoded = self._encode(texts)
            else:
                encoded = await loop.run_in_executor(self._pool, self._encode, texts)
        except BaseException as exc:
            for text, future in futures.items():
                self._pending.pop(text, None)
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RuntimeError())
                    future.exception()  # retrieved: no "never retrieved" warning
            raise
        for text, ids in zip(texts, encoded, strict=True):
            self._store(text, ids)
            self._pending.pop(text, None)
            if not futures[text].done():
                futures[text].set_result(ids)
        self.encoded_tokens += sum(map(len, encoded))

    def _store(self, unit: str, ids: list[int]) -> None:
        if unit in self._cache:
            return
        self._cache[unit] = ids
        self._cached_tokens += len(ids)
        while self._cached_tokens > self._max_cached_tokens and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached_tokens -= len(old)

    def _exact_batch(self) -> bool:
        """Whether the batch encoder gives the tokenizer's own ids on the probe texts."""
        texts = _probe_texts(self.tokenizer)
        reference = [list(self.tokenizer.encode(t, add_special_tokens=False)) for t in texts]
        return self._encode(texts) == reference


async def trim_history_cached(
    encoder: UnitEncoder, text: str, max_tokens: int, prefetch: Sequence[str] = ()
) -> str:
    """``trim_history(encoder.tokenizer, text, max_tokens)``, counting on cached line ids.

    A session's lines are encoded once: a later turn finds them in the cache, so
    trimming costs lookups, not an encode of the whole history. ``prefetch`` names
    units the caller's prompt will need too (its utterance, say), encoded in the same
    batch, so that a turn makes one round of encoding rather than two.

    Raises:
        ValueError: ``max_tokens`` is negative.
    """
    if fits_by_bytes(text, max_tokens):
        return text if max_tokens else ""
    units = line_units(text)
    counts = [len(ids) for ids in await encoder.ids_of([*units, *prefetch])][: len(units)]
    cut = history_cut(counts, max_tokens)
    if cut == 0:
        return text
    if cut < len(units):
        return "".join(units[cut:])
    return await encoder.run(trim_tokens_stepped, encoder.tokenizer, units[-1], max_tokens)


class _PlainEncode:
    """A tokenizer seen only through its ``encode`` (when its Rust batch path differs)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))


def _concat(parts: Iterable[list[int]]) -> list[int]:
    out: list[int] = []
    for ids in parts:
        out.extend(ids)
    return out


def _special_pattern(tokenizer: Any) -> re.Pattern[str] | None:
    """A pattern matching the tokenizer's added tokens, when it cuts at them plainly.

    None when the tokenizer has no added tokens, or when one of them strips the spaces
    around it or matches only as a whole word: then the text around it is not cut
    where the spelling is.
    """
    get_added = getattr(tokenizer, "get_added_vocab", None)
    if not callable(get_added):
        return None
    tokens = [token for token in get_added() if token]
    if not tokens:
        return None
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for added in decoder.values():
        if any(getattr(added, flag, False) for flag in ("lstrip", "rstrip", "single_word")):
            return None
    tokens.sort(key=len, reverse=True)
    return re.compile("|".join(map(re.escape, tokens)))


def _units(text: str, specials: re.Pattern[str], lines: bool) -> list[str]:
    """``text`` cut around every special token, and at line starts when ``lines``."""
    units: list[str] = []
    at = 0
    for match in specials.finditer(text):
        if match.start() > at:
            plain = text[at : match.start()]
            units.extend(line_units(plain) if lines else (plain,))
        units.append(match.group())
        at = match.end()
    if at < len(text):
        plain = text[at:]
        units.extend(line_units(plain) if lines else (plain,))
    return units


def _probe_texts(tokenizer: Any) -> list[str]:
    """Texts that would show a tokenizer merging across our cuts."""
    history = "\n".join(_PROBE_LINES)
    texts = [history, history.replace("\n", "\n\n"), "Conversation so far:\n" + history]
    render = getattr(tokenizer, "apply_chat_template", None)
    if callable(render):
        try:
            rendered = render(
                [
                    {"role": "system", "content": "You are June.\nBe brief."},
                    {"role": "system", "content": "Conversation so far:\n" + history},
                    {"role": "user", "content": "what's up? 👀"},
                ],
                tokenize=False,
                add_generation_prompt=True,
            )
        except Exception:  # a template that refuses this shape: the plain texts decide
            rendered = None
        if isinstance(rendered, str):
            texts.append(rendered)
    return texts
