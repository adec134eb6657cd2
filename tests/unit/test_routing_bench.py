"""The routing benchmark's settings and the deployments it runs, without running them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import routing


def test_each_mode_is_one_deployment_of_two_chat_replicas(tmp_path: Path) -> None:
    """Both modes run the same CPU deployment; only edge.chat_routing differs."""
    settings, _ = routing.parse_args(["--sessions", "2", "--turns", "3", "--think-ms", "0"])
    assert (settings.sessions, settings.turns, settings.think_s) == (2, 3, 0.0)
    configs = {mode: routing._config(tmp_path, settings, mode) for mode in routing.MODES}
    assert {c.edge.chat_routing for c in configs.values()} == {"affine", "queue"}
    for config in configs.values():
        assert config.actor.chat_replicas == 2 and config.models.deploy == "chat"
        assert config.chat.backend == "transformers" and config.chat.sampling.ignore_eos


def test_bad_settings_are_refused() -> None:
    """A non-positive count is a usage error."""
    with pytest.raises(SystemExit):
        routing.parse_args(["--turns", "0"])
