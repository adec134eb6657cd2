"""Yap protocol clients: a one-turn warmup and a load benchmark.

Both speak the original server's WebSocket protocol, so they measure yap-bus and
the single-process server the same way. ``metrics`` is pure, ``turn`` owns the I/O
of one turn, ``warmup`` and ``bench`` are the entrypoints (``python -m clients.…``).
"""
