"""Recorded sessions: list, show, export, import and replay them (``python -m replay``).

The edge records to JetStream when ``[recording]`` is on (:mod:`bus.recording`,
:mod:`edge.recorder`); this package reads the recordings back, moves them between
servers as JSON Lines, and re-drives a live edge with them.
"""
