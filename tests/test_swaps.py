"""Teacher-guided word swaps: spans, ranking, parsing untrusted replies, assembly."""

import numpy as np
import pytest

from raydistill.pipelines.swaps import (
    apply_swaps,
    occlusions,
    parse_replacement,
    rank_words,
    swap_candidates,
    swap_messages,
    word_spans,
)
from raydistill.pipelines.tasks import get_task


def test_word_spans_skip_punctuation_and_numbers():
    text = 'A "great", witty film -- 10/10 !'
    spans = word_spans(text)
    assert [text[s:e] for s, e in spans] == ["A", "great", "witty", "film"]


def test_occlusions_remove_one_word_each():
    text = "a great , witty film"
    spans = word_spans(text)
    assert occlusions(text, spans) == [
        "great , witty film",
        "a , witty film",
        "a great , film",
        "a great , witty",
    ]


def test_rank_words_by_confidence_drop():
    # Removing word 2 lowers p(source) most, then word 0; word 1 raises it.
    assert rank_words(0.9, np.array([0.5, 0.95, 0.2, 0.85]), top=3) == [2, 0, 3]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("tedious", "tedious"),
        ("  Tedious.", "Tedious"),
        ('"dull"', "dull"),
        ("Opposite: boring", "boring"),
        ("not good\nExplanation: it is the opposite", "not good"),
        ("awful (the opposite of great)", "awful"),
        ("", None),
        ("   ", None),
        (None, None),
        ("123", None),
        ("this is far too long to be a replacement word", None),
        ("...", None),
    ],
)
def test_parse_replacement_is_defensive(raw, expected):
    assert parse_replacement(raw) == expected


def test_apply_swaps_keeps_case_punctuation_and_offsets():
    text = "Great acting, but a dull plot."
    spans = word_spans(text)
    words = [text[s:e] for s, e in spans]
    out = apply_swaps(text, spans, {words.index("Great"): "awful", words.index("dull"): "gripping"})
    assert out == "Awful acting, but a gripping plot."


def test_swap_candidates_singles_then_joint_and_no_duplicates():
    text = "a great and witty film"
    spans = word_spans(text)
    great, witty = 1, 3
    reps = {great: ["awful", "dull"], witty: ["dull"]}
    cands = swap_candidates(text, spans, [great, witty], reps, per_word=2)
    assert cands[:3] == [
        "a awful and witty film",
        "a dull and witty film",
        "a great and dull film",
    ]
    # joint swaps of the top two words, cycling through the shorter list
    assert "a awful and dull film" in cands and "a dull and dull film" in cands
    assert len(cands) == len(set(cands)) and text not in cands
    # a word the LLM gave nothing usable for is skipped, not an error
    assert swap_candidates(text, spans, [great], {great: []}, per_word=2) == []


def test_swap_messages_name_labels_and_word():
    spec = get_task("sst2")
    msgs = swap_messages(spec, "gorgeous", source=1, target=0)
    assert msgs[0]["role"] == "system" and "negative instead of positive" in msgs[0]["content"]
    assert msgs[-1] == {"role": "user", "content": "Opposite of 'gorgeous':"}
    # sentiment tasks get few-shot demonstrations; other tasks go zero-shot
    assert len(msgs) > 2
    assert len(swap_messages(get_task("cola"), "the", 0, 1)) == 2
