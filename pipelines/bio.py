"""BIO (IOB2) tags ↔ entity spans, and the validity check the loaders apply.

Malformed sequences are an error, not repaired: tags are gold labels, and silently
rewriting `I-PER` after `B-LOC` would change what entity F1 measures. IOB1 data must be
converted to IOB2 before loading.
"""

from __future__ import annotations


def split_tag(tag: str) -> tuple[str, str | None]:
    """'B-PER' → ('B', 'PER'); 'O' → ('O', None); anything else raises ValueError."""
    if tag == "O":
        return "O", None
    if len(tag) > 2 and tag[0] in "BI" and tag[1] == "-":
        return tag[0], tag[2:]
    raise ValueError(f"not a BIO tag: {tag!r}")


def bio_problem(tags: list[str]) -> str | None:
    """None if `tags` is a valid BIO sequence, else a description of the first problem."""
    prev_type: str | None = None
    for i, tag in enumerate(tags):
        try:
            prefix, typ = split_tag(tag)
        except ValueError as e:
            return f"token {i}: {e}"
        if prefix == "I" and typ != prev_type:
            before = tags[i - 1] if i else "sentence start"
            return f"token {i}: {tag!r} after {before!r} (an entity starts with B-)"
        prev_type = typ
    return None


def tags_to_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """Entity spans (type, start, end) with `end` exclusive, from a valid BIO sequence."""
    spans: list[tuple[str, int, int]] = []
    start, typ = None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, t = split_tag(tag)
        if prefix != "I" and start is not None:
            spans.append((typ, start, i))  # type: ignore[arg-type]
            start, typ = None, None
        if prefix == "B":
            start, typ = i, t
    return spans


def spans_to_tags(spans: list[tuple[str, int, int]], length: int) -> list[str]:
    """The BIO tags of `length` tokens carrying `spans` (non-overlapping, end exclusive)."""
    tags = ["O"] * length
    for typ, start, end in spans:
        if not 0 <= start < end <= length or any(t != "O" for t in tags[start:end]):
            raise ValueError(f"span {(typ, start, end)} is out of range or overlaps")
        tags[start] = f"B-{typ}"
        for j in range(start + 1, end):
            tags[j] = f"I-{typ}"
    return tags


def entity_types(tag_names: tuple[str, ...] | list[str]) -> list[str]:
    """The entity types a tag set covers, in first-seen order."""
    out: list[str] = []
    for tag in tag_names:
        typ = split_tag(tag)[1]
        if typ is not None and typ not in out:
            out.append(typ)
    return out


def expand_tag_names(names: list[str]) -> tuple[str, ...]:
    """Recipe label names for token tasks: BIO tags as given, or entity types → O + B-/I-."""
    if all(n == "O" or n[:2] in ("B-", "I-") for n in names):
        return tuple(names)
    return ("O", *[f"{p}-{t}" for t in names for p in ("B", "I")])
