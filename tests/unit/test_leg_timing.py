"""A leg's stamps as stages (bus.events.LegTiming), and the GPU benchmarks' use of them:
the client-side hops, p50s per stage, a burst's spread, the report's stage table."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from actors.engines.base import EngineStamps
from bench.gpu_fullstack import Served, leg_stages
from bench.gpu_raw import Timing, raw_leg, spreads_ms, stages_p50_ms
from bench.gpu_report import report
from bus.events import LEG_STAGES, LegTiming

FULL = LegTiming(
    received=10.0,
    submitted=10.002,
    queued=10.003,
    scheduled=10.004,
    first_token=10.020,
    first_output=10.021,
    first_event=10.0215,
)


def test_stages_are_the_gaps_between_consecutive_stamps() -> None:
    stages = FULL.stages()
    assert list(stages) == [*LEG_STAGES, "engine"]
    assert stages["prompt"] == pytest.approx(0.002)
    assert stages["wait"] == pytest.approx(0.001)
    assert stages["prefill"] == pytest.approx(0.016)
    assert stages["first_event"] == pytest.approx(0.0005)
    assert stages["engine"] == pytest.approx(0.019)  # submitted -> first output


def test_an_engine_without_stamps_still_has_its_engine_stage() -> None:
    """The CPU engines without stamps, or vLLM with stats off: the engine's inner
    stages are left out, never taken as a gap from an unset (0.0) stamp."""
    timing = LegTiming(received=1.0, submitted=1.5, first_output=2.0, first_event=2.25)
    assert timing.stages() == pytest.approx({"prompt": 0.5, "first_event": 0.25, "engine": 0.5})
    assert LegTiming().stages() == {}


def test_the_full_stacks_legs_get_the_hops_from_the_clients_clock() -> None:
    frames = [SimpleNamespace(type="ack", at=10.001), SimpleNamespace(type="toolcall", at=10.023)]
    result = SimpleNamespace(sent_at=9.996, frames=frames)
    stages = leg_stages(result, Served("tool-0", 600, 300, FULL), "toolcall")  # type: ignore[arg-type]
    assert stages is not None
    assert stages["inbound"] == pytest.approx(0.004)
    assert stages["outbound"] == pytest.approx(0.0015)
    assert leg_stages(result, Served("tool-0", 0, 0, None), "toolcall") is None  # type: ignore[arg-type]


def test_raw_legs_have_no_prompt_stage_and_bursts_have_a_spread() -> None:
    early = Timing(
        submit=1.0,
        first_output=1.03,
        first=1.03,
        stamps=EngineStamps(queued=1.001, scheduled=1.002, first_token=1.029),
    )
    late = Timing(
        submit=1.0,
        first_output=1.05,
        first=1.05,
        stamps=EngineStamps(queued=1.011, scheduled=1.022, first_token=1.049),
    )
    legs = [raw_leg(early), raw_leg(late)]
    assert stages_p50_ms([leg.stages() for leg in legs])["prompt"] == 0.0
    assert spreads_ms(legs) == {
        "received": 0.0,
        "submitted": 0.0,
        "queued": 10.0,
        "scheduled": 20.0,
        "first_token": 20.0,
    }


def test_the_report_sets_each_legs_stages_raw_beside_full() -> None:
    stages = {"inbound": 3.8, "prompt": 9.8, "intake": 12.4, "prefill": 27.1}
    raw = {
        "rows": [
            {
                "mode": "concurrent",
                "sessions": 16,
                "turn": 2,
                "tool_tokens": 2,
                "turn_ttft_ms": {"p50": 150.0},
                "tool_ms": {"p50": 80.0},
                "tool_first_ms": {"p50": 68.0},
                "tool_stages_ms": {"intake": 15.2, "prefill": 48.5},
                "tool_spread_ms": {"queued": 79.3, "scheduled": 79.3},
                "chat_stages_ms": {},
                "chat_cached_tokens": 2400,
                "chat_prompt_tokens": 2700,
            }
        ]
    }
    full = [
        {
            "mode": "concurrent",
            "sessions": 16,
            "turn": 2,
            "ttft": {"p50": 78.0},
            "tool": {"p50": 74.0},
            "tool_stages_ms": stages,
            "tool_spread_ms": {"queued": 21.9, "scheduled": 49.1},
            "chat_stages_ms": {},
        }
    ]
    text = report(raw, full)
    assert "| concurrent | 16 | 2 | tool | raw 2 | - | - | 15.2 | - | 48.5 |" in text
    assert "| concurrent | 16 | 2 | tool | full | 3.8 | 9.8 | 12.4 | - | 27.1 |" in text
    assert "| 74.0 | 21.9 / 49.1 |" in text and "| 68.0 | 79.3 / 79.3 |" in text
