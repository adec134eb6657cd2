"""End-to-end fixtures: real processes, tiny transformers models, a real nats-server."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.models.tiny import ensure_tiny_model


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for the whole run, built before any actor starts."""
    root = tmp_path_factory.mktemp("models")
    ensure_tiny_model(root, "tiny-qwen2")
    return root
