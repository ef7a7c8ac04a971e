"""What the student API checks in each request input before a replica runs it.

An input is a string, a list of strings (token-classification words) or an object of
strings (a prompt template's fields). These walk all three shapes, so the limits (413),
the Unicode check and the empty-field check (422) hold for every endpoint alike.
"""

from __future__ import annotations

from typing import Any


def input_chars(item: Any) -> int:
    """Characters of an input: a string, a list of strings, or an object of those."""
    if isinstance(item, str):
        return len(item)
    if isinstance(item, list):
        return sum(input_chars(v) for v in item)
    if isinstance(item, dict):
        return sum(input_chars(v) for v in item.values())
    return 0


def input_encodable(item: Any) -> bool:
    """Every string in an input encodes as UTF-8."""
    if isinstance(item, str):
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(item, list):
        return all(input_encodable(v) for v in item)
    if isinstance(item, dict):
        return all(input_encodable(v) for v in item.values())
    return True


def input_blank(value: Any) -> bool:
    """A missing field, an empty or whitespace string, or a list of only such strings."""
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list):
        return all(input_blank(v) for v in value)
    return True
