# yap-bus tasks. `just` lists them; extra arguments pass through to the command.

set positional-arguments
set shell := ["bash", "-euo", "pipefail", "-c"]

# The project venv's python when there is one; YAP_PYTHON overrides.
venv_python := justfile_directory() / ".venv/bin/python"
python := env("YAP_PYTHON", if path_exists(venv_python) == "true" { venv_python } else { "python3" })

# List the recipes.
default:
    @{{ quote(just_executable()) }} --justfile {{ quote(justfile()) }} --list

# Run nats-server, the actors and the edge in the foreground until Ctrl-C.
up *args:
    {{ quote(python) }} -m launcher up "$@"

# Run the same in the background; returns once everything is ready.
up-detached *args:
    {{ quote(python) }} -m launcher up --detach "$@"

alias start := up-detached

# Stop what `just up` or `just start` started.
down *args:
    {{ quote(python) }} -m launcher down "$@"

# A live table of the running system's actors and edges, from the bus (`--once` to print once).
status *args:
    -{{ quote(python) }} -m launcher status "$@"

# One turn against the running system, with its latencies (`just warmup "who was Columbus?"`).
warmup *args:
    {{ quote(python) }} -m clients.warmup "$@"

# Latency percentiles under load (`just bench -n 64 -c 16`, `--plot out.png`).
bench *args:
    {{ quote(python) }} -m clients.bench "$@"

# Recorded sessions with their turns and outcomes (needs `[recording] enabled`).
record-list *args:
    {{ quote(python) }} -m replay list "$@"

# Any `python -m replay` command: `just replay show SID`, `just replay replay SID --strict`.
replay *args:
    {{ quote(python) }} -m replay "$@"

# Lint, then run the tests (pytest fails on failures and on zero tests collected).
test *args:
    {{ quote(python) }} -m ruff check .
    {{ quote(python) }} -m pytest -q "$@"

# Check lint and formatting without changing anything.
lint:
    {{ quote(python) }} -m ruff check .
    {{ quote(python) }} -m ruff format --check .

# Format the code and apply safe lint fixes.
fmt:
    {{ quote(python) }} -m ruff format .
    {{ quote(python) }} -m ruff check --fix .
