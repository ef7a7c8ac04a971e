"""What the student API checks in each request input before a replica runs it.

An input is a string, a list of strings (token-classification words; a sentence pair
[text, text_pair] for classifiers) or an object of strings (a prompt template's fields;
{"text", "text_pair"} for classifiers). These walk all three shapes, so the limits (413),
the Unicode check and the empty-field check (422) hold for every endpoint alike;
`classify_input` says what a classifier input is, or why it is not one.
"""

from __future__ import annotations

from typing import Any


def input_chars(item: Any) -> int:
    """Characters of an input: a string, a list of strings, or an object of those."""
    if isinstance(item, str):
        return len(item)
    if isinstance(item, list | tuple):  # words, or a sentence pair
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
    if isinstance(item, list | tuple):
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


PAIR_FIELDS = ("text", "text_pair")


class MalformedInput(ValueError):
    """An input of the wrong shape; the message names it (the API answers 422)."""


def classify_input(item: Any, index: int) -> str | tuple[str, str]:
    """One `/v1/classify` input → a text, or a (text, text_pair) sentence pair.

    Accepted: "text"; ["text", "text pair"]; {"text": ..., "text_pair": ...} (an object
    with only "text" is a single text). Anything else raises `MalformedInput` naming
    `inputs[index]` and the shape expected.
    """
    where = f"inputs[{index}]"
    if isinstance(item, str):
        return item
    if isinstance(item, list):
        if len(item) != 2 or not all(isinstance(x, str) for x in item):
            got = f"a list of {len(item)} item(s)"
            if len(item) == 2:
                got = "a list of two items that are not both strings"
            raise MalformedInput(
                f"{where}: a sentence pair is a list of two strings [text, text_pair]; got {got}"
            )
        return item[0], item[1]
    if isinstance(item, dict):
        extra = sorted(str(k) for k in item if k not in PAIR_FIELDS)
        if extra:
            raise MalformedInput(
                f"{where}: unknown field(s) {extra}; a sentence pair is "
                '{"text": "...", "text_pair": "..."}'
            )
        text, pair = item.get("text"), item.get("text_pair")
        if not isinstance(text, str):
            raise MalformedInput(f"{where}.text: a string is required")
        if pair is None and "text_pair" not in item:
            return text
        if not isinstance(pair, str):
            raise MalformedInput(f"{where}.text_pair: a string is required")
        return text, pair
    raise MalformedInput(
        f"{where}: expected a string, a pair [text, text_pair] or an object "
        f'{{"text", "text_pair"}}; got {type(item).__name__}'
    )
