"""Prompt templates for the LLM teacher, written from a task spec.

Kept as plain functions returning OpenAI chat messages, so every backend (vLLM, hf,
external API) sees the same conversation and prompts can be unit-tested.
"""

from __future__ import annotations

import re

from raydistill.pipelines.tasks import TaskSpec

COUNTERFACTUAL_SYSTEM = (
    "You are an expert annotator who writes counterfactual examples: you change as few "
    "words as possible in a text so that its label changes, and you keep everything else "
    "exactly the same. You reply with the rewritten text only."
)


def split_for_prompt(
    text: str, max_chars: int | None, paragraphs: int | None = None
) -> tuple[str, str]:
    """(the part a prompt shows, the unseen rest), cut at a paragraph, then at a word.

    Long inputs (IMDB reviews) are shown only in part; the edited part is spliced back onto
    the rest (`splice`), so a counterfactual is still a whole input and a minimal edit of
    it. `paragraphs` shows only the first N blank-line separated paragraphs (a news
    article's headline: a small model asked to edit 300 characters of an article rewrites
    or summarises them, but can change a few words of a six-word headline).
    """
    if paragraphs is not None:
        breaks = [m.end() for m in _PARAGRAPH_BREAK.finditer(text)]
        if len(breaks) >= paragraphs:
            head = text[: breaks[paragraphs - 1]].rstrip()
            shown, rest = split_for_prompt(head, max_chars)
            return shown, text[len(shown) :].strip()
    if max_chars is None or len(text) <= max_chars:
        return text, ""
    cut = text[:max_chars].rsplit(" ", 1)[0]
    return cut, text[len(cut) :].strip()


_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")


def splice(edited: str, text: str, shown: str, rest: str) -> str:
    """An edit of `shown` joined back onto the `rest` of `text`, with the whitespace that
    separated them in `text` (a paragraph break stays a paragraph break)."""
    if not rest:
        return edited
    after = text[len(shown) :]
    gap = after[: len(after) - len(after.lstrip())]
    return edited + ("\n\n" if "\n" in gap else " ") + rest


def truncate(text: str, max_chars: int, paragraphs: int | None = None) -> str:
    shown, rest = split_for_prompt(text, max_chars, paragraphs)
    return shown + " …" if rest else shown


def counterfactual_messages(
    spec: TaskSpec,
    text: str,
    source_label: str,
    target_label: str,
    previous: str | None = None,
    max_chars: int = 600,
    *,
    kept: str | None = None,
    edit_side: str = "text_pair",
    target_words: list[str] | None = None,
    paragraphs: int | None = None,
) -> list[dict[str, str]]:
    """Ask for a minimal edit of `text` that moves it from `source_label` to `target_label`.

    `previous` is a failed attempt from an earlier round (the teacher still saw the source
    label in it); naming it gives the model feedback instead of an identical retry.
    Sentence pairs: `text` is the side to edit, `kept` the other, shown verbatim and to be
    left as it is. `target_words` (multi-class tasks: the target class's typical words
    from the training split, `class_words.py`) are offered as a direction. `paragraphs`
    shows (and asks to edit) only the first N paragraphs (`split_for_prompt`).
    """
    if kept is not None:
        return _pair_messages(
            spec,
            text,
            kept,
            source_label,
            target_label,
            previous,
            max_chars,
            edit_side,
            target_words,
            paragraphs,
        )
    text = truncate(text, max_chars, paragraphs)
    lines = [
        f"Task: {spec.label_meaning} of a {spec.noun}. Labels: {', '.join(spec.label_names)}.",
        f"The {spec.noun} below is {source_label}. Change a few words (for example, swap "
        f"the words that make it {source_label} for words that make it {target_label}) so "
        f"that it becomes clearly {target_label}. Keep the rest of the words unchanged.",
    ]
    if target_words:
        lines.append(f"Words typical of {target_label}: {', '.join(target_words)}.")
    if previous:
        lines.append(
            f'An earlier attempt, "{truncate(previous, max_chars, paragraphs)}", was still read as '
            f"{source_label}. Change the words that carry the {spec.label_meaning} more "
            f"decisively."
        )
    lines.append(f"\n{spec.noun.capitalize()}: {text}\n")
    lines.append(f"Rewritten {spec.noun} ({target_label}):")
    return [
        {"role": "system", "content": COUNTERFACTUAL_SYSTEM},
        {"role": "user", "content": "\n".join(lines)},
    ]


def _pair_messages(
    spec: TaskSpec,
    text: str,
    kept: str,
    source_label: str,
    target_label: str,
    previous: str | None,
    max_chars: int,
    edit_side: str,
    target_words: list[str] | None,
    paragraphs: int | None = None,
) -> list[dict[str, str]]:
    """The rewrite prompt for a sentence pair: both sides shown, one to edit."""
    first, second = spec.pair_names or ("first text", "second text")
    edited_name, kept_name = (second, first) if edit_side == "text_pair" else (first, second)
    text, kept = truncate(text, max_chars, paragraphs), truncate(kept, max_chars)
    lines = [
        f"Task: {spec.label_meaning} of a {first} and a {second}. "
        f"Labels: {', '.join(spec.label_names)}.",
        f"The pair below is {source_label}. Change a few words of the {edited_name} so that "
        f"the pair becomes clearly {target_label}. Keep the {kept_name} exactly as it is, "
        f"and the rest of the {edited_name}'s words unchanged.",
    ]
    if target_words:
        lines.append(f"Words typical of {target_label}: {', '.join(target_words)}.")
    if previous:
        lines.append(
            f'An earlier {edited_name}, "{truncate(previous, max_chars, paragraphs)}", was '
            f"still read as "
            f"{source_label}. Change the words that decide it more decisively."
        )
    shown = [
        (first, kept if edited_name == second else text),
        (second, text if edited_name == second else kept),
    ]
    lines.append("")
    lines += [f"{name.capitalize()}: {value}" for name, value in shown]
    lines.append("")
    lines.append(f"Rewritten {edited_name} ({target_label}):")
    return [
        {"role": "system", "content": COUNTERFACTUAL_SYSTEM},
        {"role": "user", "content": "\n".join(lines)},
    ]
