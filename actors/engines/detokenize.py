"""Token ids to streamed text: incremental detokenization and stop strings.

Both real engines sample token ids and stream text deltas. The text side lives here
so that it behaves the same on the CPU and on vLLM, where the engine is asked for
ids only (``SamplingParams(detokenize=False)``): vLLM's own detokenizer primes a
``DecodeStream`` with the whole prompt and decodes it again on the first generated
token, which is O(prompt) work per request on the actor's event loop. A reply needs
no prompt context to decode (byte-level BPE decodes each token's bytes; at most a
SentencePiece reply loses the leading space of its first word), so the streams here
start empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

__all__ = ["IncrementalDetokenizer", "StopMatcher", "TextStream", "new_detokenizer"]

# What a byte-level decoder prints for bytes that do not yet form a character.
_REPLACEMENT = "\ufffd"


class Detokenizer(Protocol):
    def push(self, token_id: int) -> str: ...

    def flush(self) -> str: ...


class IncrementalDetokenizer:
    """Turn token ids into text deltas that never split a character.

    Byte-level BPE can cut a multibyte character across tokens; decoding such a prefix
    ends in U+FFFD. Text is held back while the decode of the recent tokens ends in
    U+FFFD and released once the character completes. Recent tokens are decoded in a
    short window (from ``_prefix``) rather than one by one, because some decoders
    (SentencePiece's leading space, say) depend on the tokens before.

    Works with any tokenizer that has ``decode``; :func:`new_detokenizer` prefers the
    Rust ``DecodeStream`` of a fast tokenizer, which does the same in one call.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # tokens up to here have been turned into emitted text

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (often all of it, maybe none)."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return new_text[len(prefix_text) :]

    def flush(self) -> str:
        """Return whatever is held back, broken characters included; call at the end."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return new_text[len(prefix_text) :]

    def _decode(self, ids: Sequence[int]) -> str:
        if not ids:
            return ""
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))


class _StreamDetokenizer:
    """``tokenizers.decoders.DecodeStream`` behind the ``push``/``flush`` interface.

    ``DecodeStream.step`` returns None while the bytes so far do not end a character;
    those tokens are kept so that ``flush`` can still decode them (lossily) at the end.
    """

    def __init__(self, backend: Any, stream_type: Any) -> None:
        self._backend = backend
        self._stream_type = stream_type
        self._stream = stream_type(skip_special_tokens=True)
        self._held: list[int] = []

    def push(self, token_id: int) -> str:
        try:
            text = self._stream.step(self._backend, token_id)
        except Exception:
            # tokenizers refuses a step whose decode does not extend the previous one
            # ("invalid prefix", rare non-monotonic byte sequences): start a fresh
            # stream at this token rather than fail the request.
            self._stream = self._stream_type(skip_special_tokens=True)
            self._held.clear()
            text = self._stream.step(self._backend, token_id)
        if text is None:
            self._held.append(token_id)
            return ""
        self._held.clear()
        return str(text)

    def flush(self) -> str:
        held, self._held = self._held, []
        if not held:
            return ""
        return str(self._backend.decode(held, skip_special_tokens=True))


def new_detokenizer(tokenizer: Any) -> Detokenizer:
    """The fastest incremental detokenizer ``tokenizer`` allows.

    A Hugging Face fast tokenizer gets a Rust ``DecodeStream`` (about a microsecond
    per token, no window decodes); anything else the windowed Python one.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        from tokenizers import Tokenizer
        from tokenizers.decoders import DecodeStream
    except ImportError:  # pragma: no cover - tokenizers is a dependency
        return IncrementalDetokenizer(tokenizer)
    if isinstance(backend, Tokenizer):
        return _StreamDetokenizer(backend, DecodeStream)
    return IncrementalDetokenizer(tokenizer)


class StopMatcher:
    """Cut the stream at the first stop string, holding back what may start one.

    Any text that could be the beginning of a stop string stays in ``_pending`` until
    the next delta proves it is or is not; so a stop string is always found whole in
    ``_pending`` and nothing of it is ever emitted.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add a delta; return the text safe to emit and whether a stop string was hit."""
        if not self._stops:
            return text, False
        self._pending += text
        hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            out, self._pending = self._pending[: min(hits)], ""
            return out, True
        keep = self._partial_suffix()
        cut = len(self._pending) - keep
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out, False

    def flush(self) -> str:
        """Return the held-back text; at the end of a stream it is no stop string."""
        out, self._pending = self._pending, ""
        return out

    def _partial_suffix(self) -> int:
        """Length of the longest suffix of ``_pending`` that is a proper stop prefix."""
        text = self._pending
        for size in range(min(len(text), max(map(len, self._stops)) - 1), 0, -1):
            tail = text[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0


class TextStream:
    """A request's generated ids in, text deltas out, cut at the first stop string.

    Args:
        tokenizer: the model's tokenizer.
        stops: stop strings; the text from the first one on is never emitted.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str] = ()) -> None:
        self._detokenizer = new_detokenizer(tokenizer)
        self._stopper = StopMatcher(stops)
        self.stopped = False

    def push(self, token_ids: Iterable[int]) -> str:
        """Add generated ids; return the text now safe to emit (``stopped`` tells a hit).

        After a stop string nothing more is emitted.
        """
        if self.stopped:
            return ""
        out: list[str] = []
        for token_id in token_ids:
            text, hit = self._stopper.push(self._detokenizer.push(token_id))
            out.append(text)
            if hit:
                self.stopped = True
                break
        return "".join(out)

    def finish(self) -> str:
        """The held-back rest at the end of the stream (empty after a stop string)."""
        if self.stopped:
            return ""
        text, hit = self._stopper.push(self._detokenizer.flush())
        if hit:
            self.stopped = True
            return text
        return text + self._stopper.flush()
