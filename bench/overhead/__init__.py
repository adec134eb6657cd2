"""Bus overhead benchmark: what the edge, NATS and the actor add to a token stream.

``python -m bench.overhead [--concurrency 1,16,64,256] [--tokens N] [--rate TOKS_PER_S]
[--duration S] [--edges 1,2] [--json out.json] [--plot out.png] [--profile DIR]``

Every piece is its own process on this host, started from a temp dir and stopped
at the end:

* a real nats-server on free ports;
* side (a), ``bus``: one chat actor with ``backend = "bench"`` and the real edge,
  ``deploy = "chat"`` (no toolcall leg), configured as deployed (INFO logs to a
  file, per-message rate limits off so that back-to-back turns are not throttled);
* side (b), ``direct``: ``bench.direct_server``, the same engine behind a bare
  websockets server in one process;
* the load client, ``python -m bench.overhead --client SPEC``, on uvloop.

Both sides run the same ``BenchEngine`` at the same ``--rate`` (tokens/s per
session) with ``bench_stamp``: each delta is ``tok@<monotonic_ns> ``, taken when the
engine yields it. CLOCK_MONOTONIC is one clock for all processes of a Linux host,
so the client's ``monotonic_ns()`` at arrival minus the stamp is the true one-way
delay, engine emit -> client receive, counted per token even when the edge merged
several deltas into one frame. For each concurrency level, each side gets N
sessions on persistent connections, each running turns back to back; every
``--cancel-every``-th turn is cancelled after ``--cancel-after`` tokens. Measured,
after a warm-up, over ``--duration`` seconds:

* ``ttft``: client sends ``start`` -> first token frame arrives;
* ``one_way``: per token, arrival - stamp (the "added per-token latency");
* ``engine_lag``: per token, stamp - the engine's schedule for it (origin + k/rate,
  the origin estimated per turn from its least late token): how late the engine's
  own process ran, which ``one_way`` does not see;
* ``cancel_to_abort``: client sends ``cancel`` -> the engine records the abort. The
  engine appends ``<request_id> <monotonic_ns>`` to ``bench_abort_log``; the
  client joins those lines with its cancel times by turn id (the ``ack``'s);
* ``cancel_to_done``: client sends ``cancel`` -> ``done`` with ``cancelled``;
* CPU per process (``/proc/<pid>/stat``) and the machine's (``/proc/stat``) over
  the window; ``foreign`` is the machine's busy time not ours (other users).

Then a throughput ladder (``--tput-sessions`` sessions, ``--tput-tokens`` per turn,
per-session rates from ``--tput-rates``, no cancels; actor and direct server
restarted at each rate) finds, per side, the most tokens/s delivered while the
one-way p99 stays under 5 ms, with no errors and at least 90% of the offered rate
delivered (a side stops after failing two steps in a row); and one phase with
``deploy = "both"`` (tool actor too) at ``--both-concurrency`` sessions shows the
tool hop. ``--profile DIR`` adds a bus phase with py-spy sampling the edge and the
actor and writes where the time goes. ``--edges 1,2`` runs the bus side's edge as
that many processes on one port (``edge.processes``, ``SO_REUSEPORT``, started by the
launcher): everything above with the first count, then the throughput ladder again,
bus side only, with each further count, and the summary says what each delivered
(CPU columns add up all edge processes). Results: a table on stdout, ``--json``,
``--plot``.

The machine may be shared: before each phase the run waits (up to
``--quiet-wait`` s) for the machine to idle, and a phase during which processes not
ours used more than ``--max-foreign`` percent of a core is run again (up to
``--retries`` times), keeping the least disturbed attempt; the table shows what
others used (``foreign``) in the kept one.
"""

from __future__ import annotations

from bench.overhead.cli import main, parse_args
from bench.overhead.phases import run_benchmark
from bench.overhead.spec import PhaseResult, PhaseSpec, Settings

__all__ = ["PhaseResult", "PhaseSpec", "Settings", "main", "parse_args", "run_benchmark"]
