"""Pure logic: edit distance, LLM output cleaning, flip verification, prompts."""

import json

import numpy as np
import pytest

from raydistill.pipelines.counterfactuals import choose_counterfactual, target_label
from raydistill.pipelines.edits import word_edit_distance
from raydistill.pipelines.llm_output import clean_candidate
from raydistill.pipelines.prompts import counterfactual_messages
from raydistill.pipelines.tasks import get_task

ORIG = "a gorgeous , witty , seductive movie ."


@pytest.mark.parametrize(
    ("a", "b", "d"),
    [
        ("the film is great", "the film is great", 0),
        ("the film is great", "the film is awful", 1),
        ("the film is great", "the film is not great", 1),
        ("the film is great", "film is great", 1),
        ("The Film is GREAT", "the film is great", 0),
        ("", "two words", 2),
        ("a b c d", "d c b a", 4),
    ],
)
def test_word_edit_distance(a, b, d):
    assert word_edit_distance(a, b) == d
    assert word_edit_distance(b, a) == d


@pytest.mark.parametrize(
    "raw",
    [
        '"a dull , witless , repellent movie ."',
        "Counterfactual: a dull , witless , repellent movie .",
        "Here is the rewritten sentence: a dull , witless , repellent movie .",
        "Sure! Here's the revised review:\n\n“a dull , witless , repellent movie .”",
        "Rewritten movie review sentence (negative): a dull , witless , repellent movie .",
        "a dull , witless , repellent movie .\n\nNote: I replaced the positive adjectives.",
        "**a dull , witless , repellent movie .**",
    ],
)
def test_clean_strips_chatter(raw):
    text, why = clean_candidate(raw, ORIG)
    assert why == "" and text == "a dull , witless , repellent movie ."


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        (None, "empty"),
        ('""', "empty"),
        ("I'm sorry, but I can't help with that.", "refusal"),
        ("As an AI, I cannot do this.", "refusal"),
        (ORIG, "echo"),
        (f'"{ORIG.upper()}"', "echo"),
        ("Here is the text: " + ORIG, "echo"),
        ("word " * 500, "too_long"),
    ],
)
def test_clean_rejects(raw, reason):
    text, why = clean_candidate(raw, ORIG)
    assert text is None and why == reason


def test_target_label_binary_and_multiclass():
    assert target_label([0.9, 0.1]) == (0, 1)
    assert target_label([0.2, 0.8]) == (1, 0)
    assert target_label([0.1, 0.6, 0.3]) == (1, 2)


def test_choose_smallest_flipping_edit():
    cands = [
        "a dull , witless , repellent movie .",
        "a dull movie , witty , seductive .",
        "a gorgeous film .",
    ]
    probs = np.array([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6]])  # target 0 (negative)
    res = choose_counterfactual(ORIG, cands, probs, target=0)
    assert res["flipped"] and res["text"] == cands[1]
    assert res["edit_words"] == word_edit_distance(ORIG, cands[1])


def test_choose_reports_closest_when_nothing_flips():
    cands = ["x y z", "a bad movie"]
    probs = np.array([[0.1, 0.9], [0.45, 0.55]])
    res = choose_counterfactual(ORIG, cands, probs, target=0)
    assert not res["flipped"] and res["closest"] == "a bad movie" and res["text"] == ""
    none = choose_counterfactual(ORIG, [], np.zeros((0, 2)), target=0)
    assert not none["flipped"] and none["closest"] == ""


def test_prompt_mentions_labels_and_feedback():
    spec = get_task("sst2")
    msgs = counterfactual_messages(spec, ORIG, "positive", "negative", previous="a fine movie")
    assert msgs[0]["role"] == "system" and msgs[1]["role"] == "user"
    user = msgs[1]["content"]
    assert ORIG in user and "negative" in user and "a fine movie" in user
    long = counterfactual_messages(spec, "word " * 1000, "positive", "negative", max_chars=100)
    assert len(long[1]["content"]) < 1200


ECHO_KW = dict(
    noun="movie review sentence", label_names=("negative", "positive"), max_edit_fraction=0.5
)
ORIG_CF = "may be amazed at the variety of tones in the work ."


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Movie review sentence (negative):", (None, "empty")),
        ("Movie review sentence (negative): ", (None, "empty")),
        (
            "Rewritten movie review sentence (positive): may be bored at the variety of tones "
            "in the work .",
            ("may be bored at the variety of tones in the work .", ""),
        ),
        (
            "(negative): may be bored at the variety of tones in the work .",
            ("may be bored at the variety of tones in the work .", ""),
        ),
        ("In a gratifying way", (None, "not_minimal")),
        ("a dull , lifeless mess from start to finish", (None, "not_minimal")),
    ],
)
def test_clean_candidate_strips_prompt_echo_and_rejects_rewrites(raw, expected):
    assert clean_candidate(raw, ORIG_CF, **ECHO_KW) == expected


def test_minimality_allows_three_words_on_short_originals():
    assert clean_candidate("a truly dreadful film", "a great film", **ECHO_KW)[1] == ""
    # Without the option every rewrite passes (the caller decides).
    assert clean_candidate("In a gratifying way", ORIG_CF)[1] == ""


def test_split_for_prompt_cuts_at_a_word_and_keeps_the_rest():
    from raydistill.pipelines.prompts import split_for_prompt, truncate

    text = "the acting was wonderful and the plot kept me guessing until the end"
    shown, rest = split_for_prompt(text, 30)
    assert shown == "the acting was wonderful and"
    assert f"{shown} {rest}" == text
    assert truncate(text, 30) == shown + " …"
    assert split_for_prompt("short", 30) == ("short", "")


def test_split_for_prompt_by_paragraph_shows_the_headline_only():
    from raydistill.pipelines.prompts import splice, split_for_prompt, truncate

    article = "US duo in first spam conviction\n\nA brother and sister were convicted.\n\nMore."
    shown, rest = split_for_prompt(article, 300, paragraphs=1)
    assert (shown, rest) == (
        "US duo in first spam conviction",
        "A brother and sister were convicted.\n\nMore.",
    )
    # Spliced back with its paragraph break, the unedited article comes back whole.
    assert splice(shown, article, shown, rest) == article
    edited = splice("US duo in first film award", article, shown, rest)
    assert edited == article.replace("spam conviction", "film award")
    assert split_for_prompt(article, 300, paragraphs=2)[0] == (
        "US duo in first spam conviction\n\nA brother and sister were convicted."
    )
    # Fewer paragraphs than asked: the character cap alone decides.
    assert split_for_prompt(article, 300, paragraphs=3) == (article, "")
    # A long first paragraph is still cut at a word by the character cap.
    shown, rest = split_for_prompt(article, 12, paragraphs=1)
    assert shown == "US duo in" and rest.startswith("first spam conviction\n\nA brother")
    assert truncate(article, 300, paragraphs=1) == "US duo in first spam conviction …"
    # A word cut (no paragraph break between the parts) is spliced with a space.
    text = "the acting was wonderful and the plot kept me guessing"
    shown, rest = split_for_prompt(text, 30)
    assert splice("the acting was dreadful and", text, shown, rest) == text.replace(
        "wonderful", "dreadful"
    )


def test_rewrite_prompt_shows_the_paragraphs_asked_for():
    spec = get_task("bbc_news")
    article = "Spam duo convicted\n\nA brother and sister were convicted of sending spam."
    user = counterfactual_messages(spec, article, "tech", "business", paragraphs=1)[1]
    assert "Spam duo convicted …" in user["content"]
    assert "brother" not in user["content"]
    whole = counterfactual_messages(spec, article, "tech", "business")[1]["content"]
    assert "brother" in whole


def test_verifier_edits_of_a_headline_keep_the_body_verbatim():
    """With shown_paragraphs=1 the LLM sees (and edits) the headline only; a candidate is
    the edited headline, the article's body spliced back after a paragraph break, and it
    is judged minimal against the headline it was asked to edit."""
    from raydistill.pipelines.counterfactuals import FlipVerifier
    from raydistill.registry import resolve_model

    body = " ".join(["The company said profits rose in the quarter."] * 6)
    article = f"Firm profits rise sharply\n\n{body}"
    batch = {
        "id": np.array(["a1"], dtype=object),
        "text": np.array([article], dtype=object),
        "target": np.array([0]),
        "llm_error": np.array([""], dtype=object),
        "candidates": np.array(
            [["Film profits rise sharply …", "A new headline entirely about the cinema awards"]],
            dtype=object,
        ),
    }
    tiny = resolve_model("tiny-bert")
    out = FlipVerifier(tiny, max_input_chars=300, shown_paragraphs=1, max_edit_fraction=0.5)(
        dict(batch)
    )
    assert out["num_valid"][0] == 1
    assert json.loads(out["rejects"][0]) == {"not_minimal": 1}
    got = out["cf_text"][0] or out["closest"][0]
    assert got == f"Film profits rise sharply\n\n{body}"


def test_verifier_splices_edits_of_a_truncated_input_back_onto_the_rest():
    """IMDB once lost every candidate: edits of the shown part were compared with the
    whole review, so each looked like a rewrite (`not_minimal`)."""
    from raydistill.pipelines.counterfactuals import FlipVerifier
    from raydistill.registry import resolve_model

    text = "the acting was wonderful and " + " ".join(["the plot kept me guessing"] * 8)
    batch = {
        "id": np.array(["r1"], dtype=object),
        "text": np.array([text], dtype=object),
        "target": np.array([0]),
        "llm_error": np.array([""], dtype=object),
        "candidates": np.array([["the acting was dreadful and …"]], dtype=object),
    }
    kw = dict(max_edit_fraction=0.5)
    tiny = resolve_model("tiny-bert")
    spliced = FlipVerifier(tiny, max_input_chars=30, **kw)(dict(batch))
    assert spliced["num_valid"][0] == 1
    # Flipped or not (a random tiny teacher), the one candidate is the spliced whole text.
    got = spliced["cf_text"][0] or spliced["closest"][0]
    assert got == text.replace("wonderful", "dreadful")
    whole = FlipVerifier(tiny, **kw)(dict(batch))
    assert whole["num_valid"][0] == 0 and "not_minimal" in whole["rejects"][0]


def test_multi_paragraph_originals_keep_their_paragraphs():
    """A news article (headline + body) edited in a few words stays a minimal edit: the
    cleaner keeps as many paragraphs as the original has, and only chatter after them is
    cut (it once cut every candidate to its headline: 0 of 30 BBC seeds flipped)."""
    from raydistill.pipelines.counterfactual_checks import clean_candidate

    orig = "Stocks rally on growth data\n\nShares rose sharply as the economy grew in the quarter."
    swapped = "Team rally on growth data\n\nPlayers rose sharply as the season grew in the quarter."
    text, why = clean_candidate(swapped, orig, max_edit_fraction=0.5)
    assert (text, why) == (swapped, "")
    reply = f'"{swapped}"\n\nI changed three words to make it about sport.\n\nHope this helps!'
    assert clean_candidate(reply, orig, max_edit_fraction=0.5) == (swapped, "")
    # Whitespace inside a paragraph is normalized, the paragraph break kept.
    messy = swapped.replace("Players rose", "Players   rose\n")
    assert clean_candidate(messy, orig, max_edit_fraction=0.5) == (swapped, "")
    # A one-paragraph original still takes only the reply's first paragraph.
    one = "a dull film"
    assert clean_candidate("a fine film\n\nNote: dull -> fine", one) == ("a fine film", "")
