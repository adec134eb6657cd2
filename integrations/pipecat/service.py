"""``YapLLMService``: the yap-bus edge as an LLM service in a Pipecat pipeline.

It takes the place of an OpenAI LLM service between the user's context aggregator
and TTS. Each ``LLMContextFrame`` is one turn: the trailing user messages go out as
the ``start``'s ``user_utterance``, the conversation before them as its
``history_text`` (:mod:`integrations.pipecat.context`), and the reply comes back as
``LLMFullResponseStartFrame``, ``LLMTextFrame``..., ``LLMFullResponseEndFrame``.
A tool decision of yes becomes a Pipecat function call; an ``InterruptionFrame``
cancels the turn on the edge at once.

One WebSocket serves the whole pipeline. Frames are read inline by the turn that
waits for them (as Pipecat's ``WebsocketLLMService`` intends), so an interruption,
which cancels that turn's task, also stops the reading; frames the cancelled turn
leaves on the socket are dropped by the next turn, up to its ``ack``
(:mod:`integrations.pipecat.protocol`).

Logging goes through loguru, Pipecat's logger, so the service's lines sit with the
rest of the pipeline's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from loguru import logger
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    FunctionCallFromLLM,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMUpdateSettingsFrame,
    StartFrame,
)
from pipecat.metrics.metrics import LLMTokenUsage
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import WebsocketLLMService
from pipecat.services.settings import LLMSettings
from pipecat.utils.types import NOT_GIVEN, NotGiven
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State

from bus.persona import PERSONA_STYLES, USER_IDENTITIES, normalize_gender
from bus.subjects import InvalidSessionId, validate_session_id
from integrations.pipecat import codes
from integrations.pipecat.backoff import Backoff, ReconnectPolicy
from integrations.pipecat.context import TurnInput, turn_input
from integrations.pipecat.protocol import (
    Acked,
    Refused,
    ReplyReader,
    TextDelta,
    ToolDecision,
    TurnDone,
    TurnFailed,
    TurnReader,
    tool_call_id,
    tool_calls,
)

__all__ = ["YapErrorFrame", "YapLLMService", "YapLLMSettings"]

PERSONA_FIELDS: Final = frozenset(
    {"assistant_gender", "persona_style", "user_identity", "persona_text"}
)
# Settings the service reads; any other LLMSettings field changed at runtime is
# warned about, since the edge's sampling is the deployment's, not the client's.
_HANDLED_FIELDS: Final = PERSONA_FIELDS | {
    "model",
    "filter_incomplete_user_turns",
    "user_turn_completion_config",
}
_CANCEL: Final = '{"type": "cancel"}'
_NO_CLOSE: Final = 1006  # what websockets reports when no close frame came


@dataclass
class YapLLMSettings(LLMSettings):
    """LLM settings plus the session's persona, all runtime-updatable.

    Send ``LLMUpdateSettingsFrame(delta=YapLLMSettings(persona_style="nerdy"))`` to
    change the persona mid-conversation: the service sends ``set_persona``.

    Parameters:
        assistant_gender: ``woman`` or ``man`` (aliases ``female``, ``f``, ``male``...).
        persona_style: one of the README's styles (flirty, ..., wholesome).
        user_identity: ``woman``, ``man``, ``non-binary``, or None for unsaid.
        persona_text: a full persona that replaces the composed one; None for none.
    """

    assistant_gender: str | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    persona_style: str | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    user_identity: str | NotGiven | None = field(default_factory=lambda: NOT_GIVEN)
    persona_text: str | NotGiven | None = field(default_factory=lambda: NOT_GIVEN)


@dataclass
class YapErrorFrame(ErrorFrame):
    """An ``ErrorFrame`` with the edge's ``error_code`` (or the service's own).

    Parameters:
        error_code: ``authentication_failed``, ``actor_lost``, ... (README), or
            ``connection_lost`` / ``connection_failed`` from the service itself.
    """

    error_code: str = ""


class _ConnectFailed(Exception):
    """No usable connection; ``outcome`` says whether trying again can help.

    ``retry``: try again within the turn's budget (refused, 1001/1006/1011/1013,
    at capacity). ``give_up``: not in this turn (a 429 throttle lasts a minute).
    ``permanent``: never (a wrong key, a bad URL).
    """

    def __init__(
        self, code: str, message: str, outcome: Literal["retry", "give_up", "permanent"]
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.outcome = outcome


class _Resend(Exception):
    """The edge is going away before this turn produced text: send it to the next."""


class _EdgeRefused(Exception):
    def __init__(self, refused: Refused) -> None:
        super().__init__(f"{refused.code}: {refused.message}")
        self.refused = refused


@dataclass(slots=True)
class _TurnProgress:
    """What one turn has done downstream, which decides whether it may be resent."""

    text_pushed: bool = False
    tools_run: bool = False
    ttfb_started: bool = False


def _close_code(exc: ConnectionClosed) -> int:
    return exc.rcvd.code if exc.rcvd is not None else _NO_CLOSE


class YapLLMService(WebsocketLLMService):
    """The yap-bus edge as a Pipecat LLM service; see the module docstring.

    Args:
        url: the edge's WebSocket endpoint, e.g. ``ws://127.0.0.1:8000/ws``.
        api_key: sent as ``X-API-Key`` (never in the URL, which proxies log).
        session_id: stable per user: the edge keeps the persona, seed and prefix
            cache under it. 1-128 characters of ``[A-Za-z0-9_-]``.
        assistant_gender, persona_style, user_identity, persona_text: the persona;
            see :class:`YapLLMSettings`.
        warm_persona: after connecting, store the persona with ``set_persona`` and
            prefill it with ``warm_persona``, so the first turn already hits the
            prefix cache.
        max_history_chars: cap on ``history_text`` (the edge keeps the newest
            tokens that fit its own budget too).
        tool_name: the function a yes decision calls when Hammer's output names none.
        reconnect: the reconnect schedule of a turn.
        connect_timeout_s: bound on the handshake and on each confirmation reply.
        frame_timeout_s: longest silence within a turn before the socket counts
            as lost (the edge itself ends a turn after 30 s without an event).
        settings: a delta applied over the settings built from the arguments above.
        rng: the randomness of the backoff jitter (tests pass a seeded one).

    Raises:
        ValueError: a bad ``url``, ``session_id`` or persona setting.
    """

    Settings = YapLLMSettings
    _settings: YapLLMSettings

    def __init__(
        self,
        *,
        url: str,
        api_key: str,
        session_id: str,
        assistant_gender: str,
        persona_style: str = "wholesome",
        user_identity: str | None = None,
        persona_text: str | None = None,
        warm_persona: bool = True,
        max_history_chars: int = 12_000,
        tool_name: str = "take_screenshot",
        reconnect: ReconnectPolicy | None = None,
        connect_timeout_s: float = 5.0,
        frame_timeout_s: float = 45.0,
        settings: YapLLMSettings | None = None,
        rng: random.Random | None = None,
        **kwargs: Any,
    ) -> None:
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"url must be a ws:// or wss:// URL, got {url!r}")
        try:
            validate_session_id(session_id)
        except InvalidSessionId as exc:
            raise ValueError(str(exc)) from None
        if max_history_chars < 0 or connect_timeout_s <= 0 or frame_timeout_s <= 0:
            raise ValueError("max_history_chars must be >= 0 and timeouts > 0")
        store = YapLLMSettings(
            model=None,  # filled in from the edge's ack
            system_instruction=None,  # the persona is the edge's system prompt
            temperature=None,  # sampling is the deployment's (configs/*.toml)
            max_tokens=None,
            top_p=None,
            top_k=None,
            frequency_penalty=None,
            presence_penalty=None,
            seed=None,  # the edge keeps a seed per session
            filter_incomplete_user_turns=False,
            user_turn_completion_config=None,
            use_provider_thinking_default=False,
            assistant_gender=assistant_gender,
            persona_style=persona_style,
            user_identity=user_identity,
            persona_text=persona_text,
        )
        if settings is not None:
            store.apply_update(settings)
        _check_persona(store)
        super().__init__(settings=store, **kwargs)
        self._url = url
        self._api_key = api_key
        self._session_id = session_id
        self._warm_persona = warm_persona
        self._max_history_chars = max_history_chars
        self._tool_name = tool_name
        self._policy = reconnect or ReconnectPolicy()
        self._connect_timeout_s = connect_timeout_s
        self._frame_timeout_s = frame_timeout_s
        self._rng = rng or random.Random()
        self._websocket: ClientConnection | None = None
        # The first start on each connection carries the persona, and so does the
        # first one after a change that set_persona could not deliver.
        self._persona_pending = True
        # A start went out on this socket and its done has not been read: an
        # interruption must cancel it on the edge.
        self._turn_open = False
        self._turn_id: str | None = None
        # Set once the key was refused: the one error was reported, nothing retries.
        self._permanent_error: str | None = None
        self._setup_failure: _ConnectFailed | None = None

    # --- public ------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        return self._session_id

    @property
    def last_turn_id(self) -> str | None:
        """The turn id of the latest acknowledged ``start`` (tool call ids derive from it)."""
        return self._turn_id

    def can_generate_metrics(self) -> bool:
        return True

    # --- lifecycle -----------------------------------------------------------------

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        failure, self._setup_failure = self._setup_failure, None
        if failure is not None:
            # Connecting happens in setup, before the pipeline runs; its verdict is
            # reported once frames can flow.
            await self._report_connect_failure(failure)

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._disconnect()

    async def _connect_websocket(self) -> None:
        """One attempt at setup; a turn that finds no connection retries with backoff."""
        if self._permanent_error is not None or self._is_open():
            return
        try:
            self._websocket = await self._open()
        except _ConnectFailed as exc:
            if exc.outcome == "retry":
                logger.warning(f"{self}: could not connect yet ({exc}); the first turn retries")
            else:
                self._setup_failure = exc

    async def _disconnect_websocket(self) -> None:
        await self.stop_all_metrics()
        await self._drop_connection()

    # --- frames --------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            await self._run_turn(frame.context)
        elif isinstance(frame, LLMUpdateSettingsFrame):
            pass  # applied by LLMService (the persona goes out in _update_settings)
        else:
            await self.push_frame(frame, direction)

    async def _update_settings(self, delta: LLMSettings) -> dict[str, Any]:
        changed = await super()._update_settings(delta)
        self._warn_unhandled_updated_settings(changed.keys() - _HANDLED_FIELDS)
        if changed.keys() & PERSONA_FIELDS:
            await self._send_persona()
        return changed

    # --- one turn ------------------------------------------------------------------

    async def _run_turn(self, context: LLMContext) -> None:
        request = turn_input(context.get_messages(), max_history_chars=self._max_history_chars)
        if not request.user_utterance:
            # The context ends with a tool result or the bot's own words: nothing
            # was said to answer (a result settled with run_llm=True lands here).
            logger.debug(f"{self}: context does not end with the user speaking; no turn")
            return
        if self._permanent_error is not None:
            logger.warning(f"{self}: not running a turn: {self._permanent_error}")
            return
        progress = _TurnProgress()
        await self.push_frame(LLMFullResponseStartFrame())
        await self.start_processing_metrics()
        try:
            await self._stream_turn(context, request, progress)
        except asyncio.CancelledError:
            # An interruption: stop the engine now, while the user is still talking.
            await self._cancel_open_turn()
            raise
        finally:
            if not progress.text_pushed:
                await self.cancel_ttfb_metrics()
            await self.stop_processing_metrics()
            await self.push_frame(LLMFullResponseEndFrame())

    async def _stream_turn(
        self, context: LLMContext, request: TurnInput, progress: _TurnProgress
    ) -> None:
        backoff = Backoff(self._policy, self._rng)
        while not self._disconnecting:  # the pipeline is stopping: no reconnecting
            try:
                ws = await self._connection(backoff)
            except _ConnectFailed as exc:
                await self._report_connect_failure(exc)
                return
            if not progress.ttfb_started:
                progress.ttfb_started = True
                await self.start_ttfb_metrics()
            try:
                await ws.send(json.dumps(self._start_message(request)))
                self._turn_open = True
                await self._read_turn(ws, context, progress)
                return
            except ConnectionClosed as exc:
                code = _close_code(exc)
                await self._drop_connection()
                if code in codes.PERMANENT_CLOSE_CODES:
                    await self._report_permanent(codes.AUTHENTICATION_FAILED, f"closed {code}")
                    return
                if progress.text_pushed:
                    await self._report(
                        codes.CONNECTION_LOST,
                        f"the connection closed ({code}) mid-reply; the reply is cut short",
                    )
                    return
                logger.warning(f"{self}: connection closed ({code}) before any text; resending")
            except _Resend:
                await self._drop_connection()
                logger.warning(f"{self}: the edge is shutting down; resending to the next one")
            except TimeoutError:
                await self._drop_connection()
                await self._report(
                    codes.CONNECTION_LOST, f"no frame from the edge for {self._frame_timeout_s} s"
                )
                return

    async def _read_turn(
        self, ws: ClientConnection, context: LLMContext, progress: _TurnProgress
    ) -> None:
        reader = TurnReader()
        resend = False
        while True:
            event = reader.feed(await self._receive(ws, self._frame_timeout_s))
            match event:
                case Acked(turn_id=turn_id, chat_model=chat_model):
                    self._turn_id = turn_id
                    self._persona_pending = False
                    if chat_model and chat_model != self._settings.model:
                        self._settings.model = chat_model
                        self._sync_model_name_to_metrics()
                case Refused(code=code, message=message):
                    self._turn_open = False
                    if code == codes.SERVER_SHUTTING_DOWN:
                        raise _Resend
                    await self._report(code, message)
                    return
                case ToolDecision(status="yes", raw=raw) if not progress.tools_run:
                    progress.tools_run = True  # a resent start must not screenshot twice
                    await self._run_tools(context, raw)
                case TextDelta(text=text):
                    if not progress.text_pushed:
                        progress.text_pushed = True
                        await self.stop_ttfb_metrics()
                    await self._push_llm_text(text)
                case TurnFailed(code=code, message=message):
                    if code == codes.SERVER_SHUTTING_DOWN and not progress.text_pushed:
                        resend = True
                    else:
                        await self._report(code, message)
                case TurnDone(usage=usage):
                    self._turn_open = False
                    await self._report_usage(usage)
                    if resend:
                        raise _Resend
                    return

    async def _run_tools(self, context: LLMContext, raw: Any) -> None:
        turn_id = self._turn_id or ""
        calls = [
            FunctionCallFromLLM(
                function_name=call.name,
                tool_call_id=tool_call_id(turn_id, index),
                arguments=call.arguments,
                context=context,
            )
            for index, call in enumerate(tool_calls(raw, self._tool_name))
        ]
        # The handlers run in their own tasks while the reply keeps streaming: the
        # edge sends the chat reply whatever the decision.
        await self.run_function_calls(calls)

    async def _cancel_open_turn(self) -> None:
        ws = self._websocket
        if not self._turn_open or ws is None:
            return
        self._turn_open = False
        # The edge answers {"type":"done","cancelled":true}; the next turn drops it
        # with the other frames before its ack.
        with contextlib.suppress(ConnectionClosed, TimeoutError, OSError):
            await ws.send(_CANCEL)

    def _start_message(self, request: TurnInput) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "start",
            "session_id": self._session_id,
            "user_utterance": request.user_utterance,
            "history_text": request.history_text,
        }
        if self._persona_pending:
            message.update(self._persona())
        return message

    def _persona(self) -> dict[str, Any]:
        settings = self._settings
        persona: dict[str, Any] = {
            "assistant_gender": settings.assistant_gender,
            "persona_style": settings.persona_style,
            # null clears an override an earlier client left on the session.
            "persona_text": settings.persona_text,
        }
        if isinstance(settings.user_identity, str):
            persona["user_identity"] = settings.user_identity
        return persona

    async def _report_usage(self, usage: Mapping[str, Any]) -> None:
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return  # a failed or cancelled turn reports none
        cached = usage.get("cached_tokens")
        await self.start_llm_usage_metrics(
            LLMTokenUsage(
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=prompt + completion,
                cache_read_input_tokens=cached if isinstance(cached, int) else 0,
            )
        )

    # --- the connection -------------------------------------------------------------

    def _is_open(self) -> bool:
        return self._websocket is not None and self._websocket.state is State.OPEN

    async def _connection(self, backoff: Backoff) -> ClientConnection:
        """The open socket, or a new one within ``backoff``'s budget.

        Raises:
            _ConnectFailed: the key was refused, or no attempt got through in time.
        """
        if self._permanent_error is not None:
            raise _ConnectFailed(codes.AUTHENTICATION_FAILED, self._permanent_error, "permanent")
        if self._websocket is not None and self._is_open():
            return self._websocket
        # Closed while idle (4000 after the edge's idle timeout, 1001 on a restart):
        # that is expected, and the turn reconnects without a word.
        await self._drop_connection()
        last: _ConnectFailed | None = None
        while (delay := backoff.next_delay()) is not None:
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                self._websocket = await self._open()
                return self._websocket
            except _ConnectFailed as exc:
                if exc.outcome != "retry":
                    raise
                last = exc
                logger.warning(f"{self}: connect attempt {backoff.attempts} failed: {exc}")
        message = f"no connection within {self._policy.budget_s} s"
        raise _ConnectFailed(
            codes.CONNECTION_FAILED, f"{message}: {last}" if last else message, "give_up"
        )

    async def _open(self) -> ClientConnection:
        """Connect and confirm: the edge accepts the handshake before it checks the
        key and the capacity, so only a ``pong`` proves the socket is usable.

        Raises:
            _ConnectFailed: with what the edge (or the network) said.
        """
        try:
            ws: ClientConnection = await self._websocket_connect(
                self._url,
                additional_headers={"X-API-Key": self._api_key},
                # Token frames are a few bytes: deflate costs CPU on both ends and
                # saves nothing (the edge does not offer it either).
                compression=None,
                open_timeout=self._connect_timeout_s,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise _ConnectFailed(
                    codes.AUTHENTICATION_FAILED, f"HTTP {status}", "permanent"
                ) from exc
            if status == 429:
                # The edge throttles an address after failed keys, for a minute.
                raise _ConnectFailed(
                    codes.RATE_LIMITED, "too many failed keys from here", "give_up"
                ) from exc
            raise _ConnectFailed(codes.CONNECTION_FAILED, f"HTTP {status}", "retry") from exc
        except InvalidURI as exc:
            raise _ConnectFailed(codes.CONNECTION_FAILED, str(exc), "permanent") from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise _ConnectFailed(codes.CONNECTION_FAILED, repr(exc), "retry") from exc
        self._persona_pending = True
        try:
            await self._confirm(ws)
        except BaseException:
            await _close_quietly(ws)
            raise
        logger.debug(f"{self}: connected to {self._url} (session {self._session_id})")
        return ws

    async def _confirm(self, ws: ClientConnection) -> None:
        try:
            await _send_quietly(ws, {"type": "ping"})
            await self._await_reply(ws, ReplyReader("pong", any_error=True))
            if self._warm_persona:
                await self._store_and_warm_persona(ws, fresh=True)
        except ConnectionClosed as exc:
            code = _close_code(exc)
            if code in codes.PERMANENT_CLOSE_CODES:
                raise _ConnectFailed(
                    codes.AUTHENTICATION_FAILED, f"closed {code}", "permanent"
                ) from exc
            raise _ConnectFailed(codes.CONNECTION_FAILED, f"closed {code}", "retry") from exc
        except TimeoutError as exc:
            raise _ConnectFailed(codes.CONNECTION_FAILED, "no pong in time", "retry") from exc
        except _EdgeRefused as exc:
            refused = exc.refused
            outcome: Literal["retry", "permanent"] = (
                "permanent" if refused.code == codes.AUTHENTICATION_FAILED else "retry"
            )
            raise _ConnectFailed(refused.code, refused.message, outcome) from exc

    async def _store_and_warm_persona(self, ws: ClientConnection, *, fresh: bool) -> None:
        """``set_persona``, then (when enabled) ``warm_persona``.

        The persona is stored on the session first so that the warm prefills the
        session's own persona (it carries the session's clock, which a warm without
        a session would not) and the edge remembers which chat actor holds it.

        Args:
            fresh: the socket has carried no turn yet, so every error is a reply.

        Raises:
            _EdgeRefused: the edge refused the persona.
        """
        await ws.send(
            json.dumps({"type": "set_persona", "session_id": self._session_id, **self._persona()})
        )
        await self._await_reply(ws, ReplyReader("ack", ack_for="set_persona", any_error=fresh))
        if not self._warm_persona:
            return
        await ws.send(json.dumps({"type": "warm_persona", **self._persona()}))
        try:
            await self._await_reply(ws, ReplyReader("warmed", any_error=True))
        except _EdgeRefused as exc:
            # Warming is a head start, never a condition: the turn works cold too.
            logger.warning(f"{self}: persona not warmed: {exc}")

    async def _send_persona(self) -> None:
        """Deliver a persona change now; if there is no socket, the next start carries it."""
        self._persona_pending = True
        ws = self._websocket
        if ws is None or not self._is_open():
            return
        try:
            await self._store_and_warm_persona(ws, fresh=False)
        except (ConnectionClosed, TimeoutError):
            await self._drop_connection()
        except _EdgeRefused as exc:
            await self._report(exc.refused.code, exc.refused.message)

    async def _await_reply(self, ws: ClientConnection, reader: ReplyReader) -> Mapping[str, Any]:
        """Read until ``reader``'s reply, within ``connect_timeout_s``.

        Raises:
            _EdgeRefused: the edge answered with an error.
            TimeoutError, ConnectionClosed: no reply.
        """
        async with asyncio.timeout(self._connect_timeout_s):
            while True:
                result = reader.feed(await self._receive(ws, None))
                if isinstance(result, Refused):
                    raise _EdgeRefused(result)
                if result is not None:
                    return result

    async def _receive(self, ws: ClientConnection, timeout_s: float | None) -> Mapping[str, Any]:
        """The next frame as a mapping (empty for anything that is not a JSON object)."""
        async with asyncio.timeout(timeout_s):
            raw = await ws.recv()
        try:
            data = json.loads(raw)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    async def _drop_connection(self) -> None:
        ws, self._websocket = self._websocket, None
        self._turn_open = False
        if ws is not None:
            await _close_quietly(ws)

    # --- errors ---------------------------------------------------------------------

    async def _report(self, code: str, message: str) -> None:
        await self.push_error_frame(
            YapErrorFrame(
                error=f"{code}: {message}" if message else code,
                error_code=code,
                category=codes.category_for(code),
            )
        )

    async def _report_permanent(self, code: str, message: str) -> None:
        if self._permanent_error is not None:
            return
        self._permanent_error = f"{code}: {message}"
        await self._call_event_handler("on_connection_error", self._permanent_error)
        await self.push_error_frame(
            YapErrorFrame(
                error=self._permanent_error,
                error_code=code,
                category=codes.category_for(code),
            ),
            force_treat_as_permanent=True,
        )

    async def _report_connect_failure(self, exc: _ConnectFailed) -> None:
        if exc.outcome == "permanent":
            await self._report_permanent(exc.code, exc.message)
            return
        await self._call_event_handler("on_connection_error", str(exc))
        await self._report(exc.code, exc.message)


def _check_persona(settings: YapLLMSettings) -> None:
    gender = settings.assistant_gender
    if not isinstance(gender, str) or normalize_gender(gender) is None:
        raise ValueError(f"assistant_gender must be woman or man (or an alias), got {gender!r}")
    style = settings.persona_style
    if not isinstance(style, str) or style.strip() not in PERSONA_STYLES:
        raise ValueError(f"persona_style must be one of {sorted(PERSONA_STYLES)}, got {style!r}")
    identity = settings.user_identity
    if identity is not None and identity not in USER_IDENTITIES:
        raise ValueError(
            f"user_identity must be one of {sorted(USER_IDENTITIES)} or None, got {identity!r}"
        )
    if settings.persona_text is not None and not isinstance(settings.persona_text, str):
        raise ValueError("persona_text must be a string or None")


async def _send_quietly(ws: ClientConnection, message: Mapping[str, Any]) -> None:
    # A closed socket still yields what the edge sent before closing (the
    # authentication error, say), which is what the caller reads next.
    with contextlib.suppress(ConnectionClosed):
        await ws.send(json.dumps(message))


async def _close_quietly(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        await ws.close()
