"""The one set of error codes: unique, complete, and the README's table lists them all."""

from __future__ import annotations

import re
from pathlib import Path

from bus import codes

README = Path(__file__).resolve().parents[2] / "README.md"


def _constants() -> dict[str, str]:
    return {
        name: getattr(codes, name)
        for name in codes.__all__
        if name.isupper() and isinstance(getattr(codes, name), str)
    }


def test_codes_are_unique_lowercase_words() -> None:
    """No two constants share a value, and every value is a lowercase snake_case word."""
    values = list(_constants().values())
    assert len(values) == len(set(values))
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", v) for v in values)


def test_all_codes_is_every_constant() -> None:
    """ALL_CODES holds exactly the code constants, and turn failures are among them."""
    assert set(_constants().values()) == codes.ALL_CODES
    assert codes.TURN_FAILURE_CODES <= codes.ALL_CODES
    assert codes.MESSAGE_CODES <= codes.ALL_CODES
    assert not codes.TURN_FAILURE_CODES & codes.MESSAGE_CODES


def test_readme_error_table_lists_every_code() -> None:
    """The README's error_code table names each code once and no code that does not exist."""
    text = README.read_text()
    table = text[text.index("| error_code | when |") :].split("\n\n", 1)[0]
    first_column = "\n".join(line.split("|")[1] for line in table.splitlines())
    listed = re.findall(r"`([a-z_]+)`", first_column)
    assert sorted(listed) == sorted(set(listed)), "a code is listed twice"
    assert set(listed) == codes.ALL_CODES
