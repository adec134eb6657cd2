"""Small edge parts: rate limits, session store, actor registry, API keys; no I/O."""

from __future__ import annotations

import hmac
import random
from datetime import datetime

import msgspec
import pytest
from websockets.datastructures import Headers

from bus.events import Heartbeat, Persona
from edge import auth, ratelimit, registry, sessions
from edge.auth import is_authorized, presented_key
from edge.ratelimit import RateLimiter
from edge.registry import ActorRegistry
from edge.sessions import (
    MemorySessionStore,
    SessionSettings,
    fit_entry,
    new_session,
    now_string,
)


class FakeClock:
    """Stands in for the ``time`` module of the module under test."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    for module in (ratelimit, sessions, registry):
        monkeypatch.setattr(module, "time", fake)
    return fake


# --- RateLimiter ----------------------------------------------------------------------


def test_rate_limiter_allows_a_burst_then_refuses(clock: FakeClock) -> None:
    """A fresh limiter allows per_minute events at once, then refuses the next."""
    limiter = RateLimiter(5)
    assert [limiter.allow(clock.now) for _ in range(6)] == [True] * 5 + [False]


def test_rate_limiter_refills_at_its_rate(clock: FakeClock) -> None:
    """After a burst, one more event is allowed per 60/per_minute seconds."""
    limiter = RateLimiter(60)  # one a second
    t0 = clock.now
    assert all(limiter.allow(t0) for _ in range(60))
    assert not limiter.allow(t0)
    assert not limiter.allow(t0 + 0.5)
    assert limiter.allow(t0 + 1.0)
    assert not limiter.allow(t0 + 1.0)
    assert limiter.allow(t0 + 2.0)


def test_rate_limiter_refill_is_capped(clock: FakeClock) -> None:
    """A long idle period refills only up to the burst size."""
    limiter = RateLimiter(3)
    for _ in range(3):
        limiter.allow(clock.now)
    later = clock.now + 10_000
    assert [limiter.allow(later) for _ in range(4)] == [True, True, True, False]


def test_rate_limiter_default_now_uses_the_monotonic_clock(clock: FakeClock) -> None:
    """Without an explicit now, the limiter reads time.monotonic."""
    limiter = RateLimiter(1)
    assert limiter.allow()
    assert not limiter.allow()
    clock.now += 60
    assert limiter.allow()


@pytest.mark.parametrize("per_minute", [0, -5])
def test_rate_limiter_zero_disables(clock: FakeClock, per_minute: int) -> None:
    """A limit of 0 (or less) allows everything."""
    limiter = RateLimiter(per_minute)
    assert all(limiter.allow(clock.now) for _ in range(10_000))


# --- MemorySessionStore ---------------------------------------------------------------


SETTINGS = SessionSettings(assistant_gender="man", persona_style="nerdy", seed=7, now="x")


async def test_session_store_put_then_get(clock: FakeClock) -> None:
    """A stored session comes back unchanged; an unknown one is None."""
    store = MemorySessionStore(ttl_s=60, max_sessions=10)
    await store.put("s1", SETTINGS)
    assert await store.get("s1") == SETTINGS
    assert await store.get("s2") is None


async def test_session_store_ttl(clock: FakeClock) -> None:
    """A session older than ttl_s since its last put is gone and forgotten."""
    store = MemorySessionStore(ttl_s=60, max_sessions=10)
    await store.put("s1", SETTINGS)
    clock.now += 60
    assert await store.get("s1") == SETTINGS
    clock.now += 0.001
    assert await store.get("s1") is None
    assert len(store) == 0


async def test_session_store_put_renews_ttl(clock: FakeClock) -> None:
    """Putting a session again restarts its TTL and does not add a second entry."""
    store = MemorySessionStore(ttl_s=60, max_sessions=10)
    await store.put("s1", SETTINGS)
    clock.now += 50
    await store.put("s1", SETTINGS)
    clock.now += 50
    assert await store.get("s1") == SETTINGS
    assert len(store) == 1


async def test_session_store_get_does_not_renew_ttl(clock: FakeClock) -> None:
    """Reading a session does not extend its life; only put does (the edge puts on every start)."""
    store = MemorySessionStore(ttl_s=60, max_sessions=10)
    await store.put("s1", SETTINGS)
    clock.now += 50
    assert await store.get("s1") is not None
    clock.now += 50
    assert await store.get("s1") is None


async def test_session_store_evicts_least_recently_used(clock: FakeClock) -> None:
    """Past max_sessions the least recently used session is dropped; a get counts as use."""
    store = MemorySessionStore(ttl_s=60, max_sessions=2)
    await store.put("a", SETTINGS)
    await store.put("b", SETTINGS)
    assert await store.get("a") is not None  # b is now the oldest
    await store.put("c", SETTINGS)
    assert len(store) == 2
    assert await store.get("b") is None
    assert await store.get("a") is not None
    assert await store.get("c") is not None


async def test_session_store_put_counts_as_use(clock: FakeClock) -> None:
    """Updating an existing session moves it to the most recently used end."""
    store = MemorySessionStore(ttl_s=60, max_sessions=2)
    await store.put("a", SETTINGS)
    await store.put("b", SETTINGS)
    await store.put("a", SETTINGS)
    await store.put("c", SETTINGS)
    assert await store.get("a") is not None
    assert await store.get("b") is None


async def test_session_store_bound_holds_under_many_sessions(clock: FakeClock) -> None:
    """However many sessions arrive, the store never holds more than max_sessions."""
    store = MemorySessionStore(ttl_s=60, max_sessions=100)
    for i in range(1000):
        await store.put(f"s{i}", SETTINGS)
    assert len(store) == 100
    assert await store.get("s999") is not None
    assert await store.get("s899") is None


def test_fit_entry_keeps_an_entry_within_one_message() -> None:
    """An entry over the value limit loses its oldest whole history lines until it fits;
    one within it, or without a history, comes back as it is."""
    encoder = msgspec.json.Encoder()
    lines = [f"User: {i} " + "\x01" * 40 for i in range(100)]  # JSON: 6 bytes a character
    settings = msgspec.structs.replace(SETTINGS, history="\n".join(lines))
    size = len(encoder.encode(settings))
    fitted, payload = fit_entry(settings, encoder, size // 3)
    assert len(payload) <= size // 3 and payload == encoder.encode(fitted)
    assert fitted.history and settings.history.endswith(fitted.history)
    assert fitted.history.split("\n")[0] in lines  # cut at a line boundary
    assert fit_entry(settings, encoder, size) == (settings, encoder.encode(settings))
    bare, _ = fit_entry(SETTINGS, encoder, 10)
    assert bare is SETTINGS


def test_settings_written_before_the_history_field_still_decode() -> None:
    """An entry without ``history`` (an older edge's) decodes with an empty history, and an
    older edge, which ignores unknown fields, reads a new one."""
    old = msgspec.json.encode({"assistant_gender": "man", "seed": 3, "now": "x"})
    assert msgspec.json.decode(old, type=SessionSettings).history == ""

    class OldSettings(msgspec.Struct, kw_only=True, frozen=True):
        assistant_gender: str | None = None
        seed: int = 0

    new = msgspec.json.encode(msgspec.structs.replace(SETTINGS, history="User: hi"))
    assert msgspec.json.decode(new, type=OldSettings).seed == 7


# --- session settings and clock -------------------------------------------------------


def test_now_string_format() -> None:
    """The session clock reads like the original server's: day/month/year weekday hh:mm AM."""
    assert now_string(datetime(2026, 11, 25, 9, 41)) == "25/11/2026 Wednesday 09:41 AM (morning)"


@pytest.mark.parametrize(
    ("hour", "clock_text", "part"),
    [
        (0, "12:00 AM", "night"),
        (4, "04:00 AM", "night"),
        (5, "05:00 AM", "morning"),
        (11, "11:00 AM", "morning"),
        (12, "12:00 PM", "afternoon"),
        (16, "04:00 PM", "afternoon"),
        (17, "05:00 PM", "evening"),
        (20, "08:00 PM", "evening"),
        (21, "09:00 PM", "night"),
        (23, "11:00 PM", "night"),
    ],
)
def test_now_string_parts_of_day(hour: int, clock_text: str, part: str) -> None:
    """Hours map to night, morning, afternoon and evening at 5, 12, 17 and 21 o'clock."""
    assert (
        now_string(datetime(2024, 2, 29, hour, 0)) == f"29/02/2024 Thursday {clock_text} ({part})"
    )


def test_new_session_is_seeded_from_rng() -> None:
    """A new session takes a seed in 1..1,000,000 from the rng and the clock string of now."""
    moment = datetime(2026, 1, 1, 18, 30)
    first = new_session(random.Random(3), moment)
    assert first == new_session(random.Random(3), moment)
    assert 1 <= first.seed <= 1_000_000
    assert first.now == now_string(moment)
    assert first.assistant_gender is None


def test_settings_persona_defaults() -> None:
    """Default settings give the default persona, with an unset gender read as woman."""
    assert SessionSettings().persona() == Persona(
        assistant_gender="woman",
        persona_style="wholesome",
        user_identity="non-binary",
        persona_text=None,
        now="",
    )


def test_settings_persona_carries_every_field() -> None:
    """persona() copies gender, style, identity, override text and clock from the settings."""
    settings = SessionSettings(
        assistant_gender="man",
        persona_style="savage",
        user_identity="woman",
        persona_text="You are Rex.",
        seed=9,
        now="01/01/2026 Thursday 06:30 PM (evening)",
    )
    assert settings.persona() == Persona(
        assistant_gender="man",
        persona_style="savage",
        user_identity="woman",
        persona_text="You are Rex.",
        now="01/01/2026 Thursday 06:30 PM (evening)",
    )


# --- ActorRegistry --------------------------------------------------------------------


def beat(actor_id: str, kind: str = "tool", interval_s: float = 0.25, **kw: object) -> Heartbeat:
    return Heartbeat(actor_id=actor_id, kind=kind, interval_s=interval_s, **kw)  # type: ignore[arg-type]


def test_unknown_actor_counts_as_alive() -> None:
    """An actor not heard from yet is alive (it just answered a request)."""
    assert ActorRegistry(lost_after_s=1.5).is_alive("nobody", now=0.0)


def test_actor_lost_after_threshold() -> None:
    """An actor is alive up to lost_after_s after its last heartbeat and lost after."""
    actors = ActorRegistry(lost_after_s=1.5)
    actors.observe(beat("a1"), now=100.0)
    assert actors.is_alive("a1", now=101.5)
    assert not actors.is_alive("a1", now=101.51)
    actors.observe(beat("a1"), now=101.6)
    assert actors.is_alive("a1", now=102.0)


def test_slow_heartbeats_get_three_intervals() -> None:
    """An actor with a long interval is allowed three missed beats before it is lost."""
    actors = ActorRegistry(lost_after_s=1.5)
    actors.observe(beat("a1", interval_s=2.0), now=0.0)
    assert actors.is_alive("a1", now=6.0)
    assert not actors.is_alive("a1", now=6.01)


def test_observe_without_now_uses_the_monotonic_clock(clock: FakeClock) -> None:
    """Heartbeats observed without a time are stamped with time.monotonic."""
    actors = ActorRegistry(lost_after_s=1.5)
    actors.observe(beat("a1"))
    clock.now += 1.0
    assert actors.is_alive("a1")
    clock.now += 1.0
    assert not actors.is_alive("a1")


def test_live_filters_by_kind_readiness_and_draining() -> None:
    """live(kind) lists ready, non-draining actors of that kind only."""
    actors = ActorRegistry(lost_after_s=1.5)
    actors.observe(beat("t1", "tool"), now=0.0)
    actors.observe(beat("t2", "tool", ready=False), now=0.0)
    actors.observe(beat("t3", "tool", draining=True), now=0.0)
    actors.observe(beat("c1", "chat"), now=0.0)
    assert [s.heartbeat.actor_id for s in actors.live("tool", now=0.5)] == ["t1"]
    assert [s.heartbeat.actor_id for s in actors.live("chat", now=0.5)] == ["c1"]


def test_latest_heartbeat_wins() -> None:
    """A new heartbeat replaces the actor's previous state (e.g. it starts draining)."""
    actors = ActorRegistry(lost_after_s=1.5)
    actors.observe(beat("c1", "chat"), now=0.0)
    actors.observe(beat("c1", "chat", draining=True), now=0.2)
    assert actors.live("chat", now=0.3) == []
    assert len(actors.snapshot()) == 1


def test_live_excludes_lost_actors() -> None:
    """An actor that is_alive() reports lost is not listed by live()."""
    actors = ActorRegistry(lost_after_s=1.5)
    actors.observe(beat("t1", "tool"), now=0.0)
    assert not actors.is_alive("t1", now=5.0)
    assert actors.live("tool", now=5.0) == []


def test_prune_forgets_long_silent_actors() -> None:
    """prune() forgets actors silent for more than ten times lost_after_s, and only those."""
    actors = ActorRegistry(lost_after_s=1.5)
    actors.observe(beat("old"), now=0.0)
    actors.observe(beat("new"), now=10.0)
    actors.prune(15.0)
    assert {s.heartbeat.actor_id for s in actors.snapshot()} == {"old", "new"}
    actors.prune(15.01)
    assert [s.heartbeat.actor_id for s in actors.snapshot()] == ["new"]


def test_live_prunes() -> None:
    """live() prunes as it goes, so the registry does not grow with dead actors."""
    actors = ActorRegistry(lost_after_s=1.0)
    for i in range(50):
        actors.observe(beat(f"a{i}"), now=0.0)
    actors.observe(beat("fresh"), now=100.0)
    assert [s.heartbeat.actor_id for s in actors.live("tool", now=100.0)] == ["fresh"]
    assert len(actors.snapshot()) == 1


# --- auth -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/ws?api_key=k1", {}, "k1"),
        ("/ws?x=1&api_key=k1&y=2", {}, "k1"),
        ("/ws?api_key=a%2Bb%20c", {}, "a+b c"),
        ("/ws?api_key=first&api_key=second", {}, "first"),
        ("/ws?api_key=q", {"X-API-Key": "h"}, "q"),  # the query wins
        ("/ws", {"X-API-Key": "h1"}, "h1"),
        ("/ws", {"x-api-key": "h1"}, "h1"),
        ("/ws?api_key=", {"X-API-Key": "h1"}, "h1"),  # a blank query value is no key
        ("/ws", {"Authorization": "Bearer b1"}, "b1"),
        ("/ws", {"authorization": "bearer b1"}, "b1"),
        ("/ws", {"Authorization": "BEARER  b1 "}, "b1"),
        ("/ws", {"X-API-Key": "h1", "Authorization": "Bearer b1"}, "h1"),
        ("/ws", {"Authorization": "Basic dXNlcjpwYXNz"}, None),
        ("/ws", {"Authorization": "Bearer"}, None),
        ("/ws", {"Authorization": "Bearer "}, None),
        ("/ws", {"X-API-Key": ""}, None),
        ("/ws", {}, None),
        ("/ws?apikey=k1", {}, None),
        ("/status", {}, None),
    ],
)
def test_presented_key(path: str, headers: dict[str, str], expected: str | None) -> None:
    """The key comes from the api_key query, else X-API-Key, else a Bearer token."""
    assert presented_key(path, Headers(headers)) == expected


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/ws?api_key=yap_token", {}),
        ("/ws", {"X-API-Key": "yap_token"}),
        ("/ws", {"Authorization": "Bearer yap_token"}),
    ],
)
def test_right_key_is_authorized(path: str, headers: dict[str, str]) -> None:
    """The expected key through any of the three channels is accepted."""
    assert is_authorized(path, Headers(headers), "yap_token")


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/ws", {}),
        ("/ws?api_key=wrong", {}),
        ("/ws?api_key=yap_toke", {}),
        ("/ws?api_key=yap_token_", {}),
        ("/ws?api_key=YAP_TOKEN", {}),
        ("/ws", {"X-API-Key": "wrong"}),
        ("/ws", {"Authorization": "Bearer wrong"}),
        ("/ws", {"Authorization": "yap_token"}),
        ("/ws?api_key=wrong", {"X-API-Key": "yap_token"}),  # the query is the one checked
        ("/ws?api_key=%C3%A9", {}),  # non-ASCII: refused, not a TypeError
    ],
)
def test_wrong_or_missing_key_is_refused(path: str, headers: dict[str, str]) -> None:
    """A missing, wrong, truncated or extended key is refused."""
    assert not is_authorized(path, Headers(headers), "yap_token")


def test_key_compare_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key is compared with hmac.compare_digest on bytes, never with ==."""
    calls: list[tuple[object, object]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return hmac.compare_digest(a, b)

    monkeypatch.setattr(auth, "hmac", type("H", (), {"compare_digest": staticmethod(spy)}))
    assert not is_authorized("/ws?api_key=nope", Headers(), "yap_token")
    assert is_authorized("/ws?api_key=yap_token", Headers(), "yap_token")
    assert calls == [(b"nope", b"yap_token"), (b"yap_token", b"yap_token")]


def test_missing_key_skips_the_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no key presented there is nothing to compare and the answer is no."""
    calls: list[object] = []
    monkeypatch.setattr(
        auth, "hmac", type("H", (), {"compare_digest": staticmethod(lambda *a: calls.append(a))})
    )
    assert not is_authorized("/ws", Headers(), "yap_token")
    assert calls == []


# --- the client behind trusted proxies ------------------------------------------------

PROXIES = auth.parse_networks(["10.0.0.0/8", "192.0.2.1"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("203.0.113.5", ["198.51.100.1"], (), "203.0.113.5"),  # no trusted proxies: ignored
        ("203.0.113.5", ["198.51.100.1"], PROXIES, "203.0.113.5"),  # peer is no proxy
        ("10.1.2.3", ["198.51.100.1"], PROXIES, "198.51.100.1"),
        ("10.1.2.3", ["6.6.6.6, 198.51.100.1"], PROXIES, "198.51.100.1"),  # rightmost wins
        ("10.1.2.3", ["198.51.100.1, 192.0.2.1"], PROXIES, "198.51.100.1"),  # proxies skipped
        ("10.1.2.3", ["198.51.100.1", "10.9.9.9"], PROXIES, "198.51.100.1"),  # two headers
        ("10.1.2.3", ["10.4.4.4"], PROXIES, "10.1.2.3"),  # only proxies: the last one
        ("10.1.2.3", [], PROXIES, "10.1.2.3"),
        ("10.1.2.3", ["not-an-ip"], PROXIES, "not-an-ip"),  # not a proxy, so the client
    ],
)
def test_client_address(
    peer: str, forwarded: list[str], trusted: tuple[auth.Network, ...], expected: str
) -> None:
    """X-Forwarded-For counts only from a trusted proxy, read from the right."""
    headers = Headers([("X-Forwarded-For", value) for value in forwarded])
    assert auth.client_address(peer, headers, trusted) == expected


def test_parse_networks_refuses_garbage() -> None:
    """A trusted proxy must be an address or a CIDR block."""
    with pytest.raises(ValueError):
        auth.parse_networks(["proxy.example"])


# --- capacity -----------------------------------------------------------------------


def test_local_slots_count_to_the_limit() -> None:
    """One edge admits up to the limit; a released slot is free again, once."""
    from edge.capacity import LocalSlots

    slots = LocalSlots(2)
    first, second = slots.acquire(), slots.acquire()
    assert first is not None and second is not None and slots.acquire() is None
    assert slots.active() == 2
    first.release()
    first.release()
    assert slots.active() == 1 and slots.acquire() is not None and slots.acquire() is None
