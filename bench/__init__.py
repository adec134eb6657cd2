"""Benchmarks, each run as ``python -m bench.<name>`` from the repository root.

``bench.overhead`` measures what the edge, NATS and the actor add to a token stream
(CPU); ``bench.direct_server`` is its baseline, the same bench engine behind a bare
WebSocket server. ``bench.scaleout`` compares chat replicas and a 3-node NATS
cluster and times an actor's recovery; ``bench.routing`` compares affine and
queue-group chat routing. The GPU benchmarks live beside them.
"""
