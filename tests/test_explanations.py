"""The explanation chain's prompts and parsers (pipelines/explanations.py)."""

import re

import pytest

from raydistill.pipelines.explanations import (
    DIMENSIONS,
    R_MISSING_DIM,
    R_NO_VERDICT,
    R_OUT_OF_RANGE,
    R_TOO_LONG,
    R_UNNAMED_FLAW,
    accept_revision,
    critique_messages,
    explain_messages,
    judge_messages,
    parse_critique,
    parse_explanation,
    parse_judge,
    revise_messages,
)

Q, CH, A = (
    "Where would you put a plate after washing it?",
    ["cupboard", "table", "oven"],
    "cupboard",
)


def test_chain_shares_its_prompt_prefix():
    e = explain_messages(Q, CH, A)
    c = critique_messages(Q, CH, A, "Plates are stored in cupboards.")
    r = revise_messages(Q, CH, A, "Plates are stored in cupboards.", "Not contrastive.")
    assert c[:2] == e[:2] and r[:3] == c[:3]  # prefix caching reuses calls 1→2→3
    assert "(a) cupboard" in e[1]["content"] and "Answer: cupboard" in e[1]["content"]
    assert "Critique: Not contrastive." in r[3]["content"]
    assert all(d in judge_messages(Q, CH, A, "x")[1]["content"] for d in DIMENSIONS)


@pytest.mark.parametrize(
    "raw, flaw",
    [
        ('{"flaw": false, "critique": "fine"}', False),
        ('Sure! {"flaw": true, "critique": "It does not say why not the oven."}', True),
        ('{"flaw": "no", "critique": ""}', False),
        ("The explanation has no flaws.", False),
        ("The explanation is correct.", False),
        ("The explanation is correct but it does not mention the table.", True),
        ("It is vague about the other choices.", True),
    ],
)
def test_critique_verdicts(raw, flaw):
    got, why = parse_critique(raw)
    assert why == "" and got["flaw"] is flaw


def test_prompts_show_no_answer_to_copy():
    """v1's critique prompt showed `{"flaw": true, "critique": "..."}` and its judge an
    all-3 example; SmolLM2-135M copied both (128 of 128 flaws, 3 nearly everywhere)."""
    crit = critique_messages(Q, CH, A, "Plates go in cupboards.")[-1]["content"]
    judge = judge_messages(Q, CH, A, "Plates go in cupboards.")[1]["content"]
    assert '"flaw"' in crit and '"critique"' in crit and "..." not in crit
    assert not re.search(r'"flaw"\s*:', crit)  # keys named, never given a value
    assert not re.search(r'"\w+"\s*:\s*\d', judge)
    assert re.findall(r"\d", judge) == ["1", "5"]  # only the scale's ends


@pytest.mark.parametrize(
    "raw",
    [
        '{"flaw": true, "critique": "..."}',
        '{"flaw": true, "critique": ""}',
        '{"flaw": "yes", "critique": " ... "}',
        '{"flaw": true}',
    ],
)
def test_a_flaw_that_names_nothing_is_not_revised(raw):
    assert parse_critique(raw) == (None, R_UNNAMED_FLAW)


def test_critique_without_verdict_is_counted():
    assert parse_critique("Plates are round.") == (None, R_NO_VERDICT)
    assert parse_critique("")[0] is None
    assert parse_critique(None)[0] is None


def test_explanation_parse_and_revision_cap():
    assert parse_explanation("Explanation: Plates go in cupboards.") == (
        "Plates go in cupboards.",
        "",
    )
    assert parse_explanation("word " * 100)[1] == R_TOO_LONG
    assert parse_explanation("   ")[0] is None
    orig = "Plates are kept in cupboards."
    short = "Plates belong in cupboards, not ovens."  # 6 words <= 1.5 x 5
    assert accept_revision(orig, short) == (short, "")
    assert accept_revision(orig, "long " * 20) == (orig, R_TOO_LONG)  # 20 > 1.5 × 5 words
    assert accept_revision(orig, None)[0] == orig


def test_judge_parser_never_defaults():
    good = '{"plausibility": 4, "understandability": 5, "completeness": 3, "satisfaction": "4", "contrastiveness": 2.0}'
    got, why = parse_judge(good)
    assert why == "" and got == {
        "plausibility": 4, "understandability": 5, "completeness": 3, "satisfaction": 4,
        "contrastiveness": 2,
    }  # fmt: skip
    assert parse_judge(good.replace('"completeness": 3', '"completeness": 7'))[1] == R_OUT_OF_RANGE
    assert parse_judge('{"plausibility": 4}')[1] == R_MISSING_DIM
    assert parse_judge("I would rate it a 4 overall.")[0] is None
    assert parse_judge(good.replace("4,", "true,", 1))[1] == R_OUT_OF_RANGE
