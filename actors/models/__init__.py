"""Models built locally for tests and demos."""

from actors.models.tiny import TINY_SPECS, TinyModelSpec, ensure_tiny_model

__all__ = ["TINY_SPECS", "TinyModelSpec", "ensure_tiny_model"]
