"""``python -m replay``: see :mod:`replay.cli`."""

from replay.cli import main

if __name__ == "__main__":
    main()
