"""Multi-class counterfactuals and sentence pairs, without a cluster: prompts, class words,
reply checks, kept-side verification, pair tokenization, serving input parsing.

The whole path on a local Ray cluster is `test_cod_pair_e2e.py` (slow).
"""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raydistill.config import ConfigError, load_config
from raydistill.pipelines.class_words import class_words, row_words, swap_demos
from raydistill.pipelines.counterfactual_checks import (
    REJECT_FRAGMENT,
    REJECT_FRAMING,
    REJECT_FUNCTION_WORDS,
    REJECT_KEPT_CHANGED,
    check_replacement,
    clean_candidate,
    edits_kept_side,
    kept_side_intact,
    pair_inputs,
    split_pair_reply,
)
from raydistill.pipelines.counterfactuals import pending_items, target_labels
from raydistill.pipelines.prompts import counterfactual_messages
from raydistill.pipelines.swaps import SENTIMENT_SWAPS, swap_messages
from raydistill.pipelines.tasks import BBC_CLASSES, get_task, spec_for
from raydistill.serving.request_inputs import MalformedInput, classify_input

BBC = get_task("bbc_news")
SNLI = get_task("snli")
PREMISE = "A man is playing guitar on a busy street."
HYPOTHESIS = "A man is outdoors."


# ---------------------------------------------------------------- reply checks


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # The replies the 4-class news run spliced into texts (issue 15).
        ("Opposite of 'marketing", REJECT_FRAMING),
        ("Yet unlike", REJECT_FUNCTION_WORDS),
        ("Encounter A", REJECT_FRAGMENT),
        # A class name followed by a colon, the multi-class prompt's wording echoed.
        ("tech: software", REJECT_FRAMING),
        ("Business: shares", REJECT_FRAMING),
        ("Replace 'shares' with a word typical of tech.", REJECT_FRAMING),
        ("a word typical of tech", REJECT_FRAMING),
        ("the", REJECT_FUNCTION_WORDS),
        ("full of", REJECT_FRAGMENT),
    ],
)
def test_framing_and_fragments_are_refused_by_reason(raw, reason):
    assert check_replacement(raw, word="marketing", label_names=BBC_CLASSES) == (None, reason)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("software", "software"),
        ("Morale", "Morale"),  # a word: the "opposite" prompt was the problem, not its form
        ("online shopping", "online shopping"),
        ("not", "not"),  # negation carries NLI contradictions: not a function word here
        ("Opposite: boring", "boring"),  # a label before the answer is cut, as before
        ("so-so", "so-so"),
    ],
)
def test_plain_replacements_pass(raw, expected):
    assert check_replacement(raw, label_names=BBC_CLASSES) == (expected, "")


@settings(max_examples=200, deadline=None)
@given(label=st.sampled_from(BBC_CLASSES), rest=st.text(max_size=30))
def test_a_class_name_with_a_colon_is_never_a_replacement(label, rest):
    for head in (label, label.upper(), label.capitalize()):
        assert check_replacement(f"{head}: {rest}", label_names=BBC_CLASSES)[0] is None


@settings(max_examples=200, deadline=None)
@given(word=st.from_regex(r"[a-z]{2,12}", fullmatch=True), tail=st.sampled_from(["", "'", ":"]))
def test_the_opposite_framing_never_passes(word, tail):
    rep, why = check_replacement(f"Opposite of '{word}{tail}", word=word)
    assert rep is None and why in (REJECT_FRAMING, "unparsable")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_check_replacement_never_raises_and_returns_short_text(raw):
    rep, why = check_replacement(raw, label_names=BBC_CLASSES)
    assert (rep is None) == bool(why)
    if rep is not None:
        assert rep.strip() == rep and len(rep.split()) <= 3 and "\n" not in rep


def test_rewrite_candidate_with_a_leading_class_name_is_cut():
    original = "Shares in the firm rose sharply."
    text, why = clean_candidate(
        "tech: Software in the firm rose sharply.", original, label_names=BBC_CLASSES
    )
    assert (text, why) == ("Software in the firm rose sharply.", "")
    # ... unless the original itself starts that way.
    assert (
        clean_candidate("Tech: a b c", "Tech: a b d", label_names=BBC_CLASSES)[0] == "Tech: a b c"
    )


# ---------------------------------------------------------------- class words


def _rows():
    rows = []
    for i in range(6):
        business = (
            "shares in the market" + (" analysts" if i < 4 else "") + (" fell" if i < 3 else "")
        )
        rows.append({"text": f"{business} {i}", "label": 0})
        rows.append({"text": f"the film won a music award {i}", "label": 1})
        rows.append({"text": f"new software for the market {i}", "label": 4})
    rows.append({"text": "a rare word zeppelin", "label": 0})
    return rows


def test_class_words_from_a_hand_built_data_set():
    words = class_words(_rows(), BBC_CLASSES, top=3)
    assert list(words) == list(BBC_CLASSES)
    # In every business row, then in 4, then in 3: ranked by how typical, not alphabetically.
    assert words["business"] == ["shares", "analysts", "fell"]
    assert set(words["entertainment"]) == {"award", "film", "music"}
    # "market" is in every business and every tech row: far down tech's list, not business's.
    assert words["tech"][:2] == ["new", "software"] and "market" not in words["business"]
    assert words["politics"] == [] and words["sports"] == []
    flat = {w for ws in words.values() for w in ws}
    # "zeppelin": one row (< min_rows); "the", "in", "for", "a": function words.
    assert not flat & {"zeppelin", "the", "in", "for", "a"}
    # Deterministic: the same rows in another order give the same words.
    assert class_words(list(reversed(_rows())), BBC_CLASSES, top=3) == words


def test_class_words_count_a_row_once_and_check_labels():
    assert row_words("Shares shares SHARES of the market 2024 i'm") == {"shares", "market"}
    with pytest.raises(ValueError, match="label 7"):
        class_words([{"text": "x", "label": 7}], BBC_CLASSES)


def test_class_words_of_the_edited_side_of_pairs():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from pair_data import LABELS, MARKERS, rows

    data = [dict(r, label=LABELS.index(r["label"])) for r in rows(300, 0)]
    words = class_words(data, LABELS, field="hypothesis", top=4)
    for label in LABELS:
        assert set(words[label]) == set(MARKERS[label])


def test_swap_demos_pair_source_words_with_target_words():
    words = {"business": ["shares", "market"], "tech": ["software", "online", "digital"]}
    assert swap_demos(words, "business", "tech") == [("shares", "software"), ("market", "online")]
    assert swap_demos(None, "business", "tech") == [] and swap_demos({}, "a", "b") == []


# ---------------------------------------------------------------- prompts


def test_sentiment_swap_prompt_is_unchanged():
    """SST-2's numbers were measured with this prompt; its requests are cached by content."""
    sst2 = get_task("sst2")
    expected = [
        {
            "role": "system",
            "content": "You help edit a movie review sentence so that it reads as negative "
            "instead of positive. Given one word from it, you reply with a word or short "
            "phrase of the opposite meaning to put in its place, and nothing else.",
        }
    ]
    for w, swap in SENTIMENT_SWAPS:
        expected += [
            {"role": "user", "content": f"Opposite of '{w}':"},
            {"role": "assistant", "content": swap},
        ]
    expected.append({"role": "user", "content": "Opposite of 'witty':"})
    assert swap_messages(sst2, "witty", 1, 0) == expected
    assert swap_messages(sst2, "witty", 1, 0, class_words={"x": ["y"]}) == expected


def test_multiclass_swap_prompt_moves_toward_the_target_with_data_demos():
    words = {"business": ["shares", "market"], "tech": ["software", "online"]}
    msgs = swap_messages(BBC, "profits", 0, 4, class_words=words)
    text = json.dumps(msgs).lower()
    assert "opposite" not in text and "movie" not in text
    assert "topic becomes tech instead of business" in msgs[0]["content"]
    assert "typical of tech" in msgs[0]["content"]
    assert msgs[1:5] == [
        {"role": "user", "content": "Replace 'shares' with a word typical of tech."},
        {"role": "assistant", "content": "software"},
        {"role": "user", "content": "Replace 'market' with a word typical of tech."},
        {"role": "assistant", "content": "online"},
    ]
    assert msgs[-1] == {"role": "user", "content": "Replace 'profits' with a word typical of tech."}
    # No class words: no demonstrations, and still no sentiment pairs.
    bare = swap_messages(BBC, "profits", 0, 4)
    assert len(bare) == 2 and "gripping" not in json.dumps(bare)


def test_pair_swap_prompt_names_the_edited_side():
    msgs = swap_messages(SNLI, "outdoors", 0, 2, edit_side="text_pair")
    assert "the hypothesis of a premise and hypothesis pair" in msgs[0]["content"]
    assert "typical of contradiction" in msgs[0]["content"]
    assert "the premise of" in swap_messages(SNLI, "man", 0, 2, edit_side="text")[0]["content"]


def test_rewrite_prompt_for_pairs_shows_both_sides_and_keeps_one():
    msgs = counterfactual_messages(
        SNLI,
        HYPOTHESIS,
        "entailment",
        "contradiction",
        kept=PREMISE,
        target_words=["sleeping", "indoors"],
    )
    user = msgs[1]["content"]
    assert f"Premise: {PREMISE}" in user and f"Hypothesis: {HYPOTHESIS}" in user
    assert user.index("Premise:") < user.index("Hypothesis:")
    assert "Keep the premise exactly as it is" in user
    assert "Words typical of contradiction: sleeping, indoors." in user
    assert user.rstrip().endswith("Rewritten hypothesis (contradiction):")


def test_rewrite_prompt_for_multiclass_offers_the_target_words():
    msgs = counterfactual_messages(BBC, "Shares rose.", "business", "tech", target_words=["web"])
    assert "Words typical of tech: web." in msgs[1]["content"]
    plain = counterfactual_messages(BBC, "Shares rose.", "business", "tech")
    assert "typical" not in plain[1]["content"]


# ---------------------------------------------------------------- targets and items


def test_target_policies():
    probs = [0.1, 0.5, 0.05, 0.3, 0.05]
    assert target_labels(probs, "runner_up") == (1, [3])
    assert target_labels(probs, "all") == (1, [3, 0, 2, 4])
    with pytest.raises(ValueError, match="targets"):
        target_labels(probs, "every")


def test_pending_items_for_pairs_and_all_targets():
    cfg = load_config(None, ["method.counterfactuals.targets=all"])
    seed = {
        "id": "train-3",
        "text": PREMISE,
        "text_pair": HYPOTHESIS,
        "label": 0,
        "teacher_logits": [3.0, 1.0, 2.0],
    }
    items = pending_items([seed], cfg.method.counterfactuals)
    assert list(items) == ["train-3>t2", "train-3>t1"]
    it = items["train-3>t2"]
    assert (it["text"], it["kept"], it["edit_side"]) == (HYPOTHESIS, PREMISE, "text_pair")
    assert it["parent_id"] == "train-3" and it["target"] == 2 and it["source_label"] == 0
    one = pending_items([seed], load_config(None, []).method.counterfactuals)
    assert list(one) == ["train-3"]  # runner-up: the seed's own id, as before
    first = load_config(None, ["method.counterfactuals.edit_side=text"]).method.counterfactuals
    it = pending_items([seed], first)["train-3"]
    assert (it["text"], it["kept"]) == (PREMISE, HYPOTHESIS)
    single = pending_items([{k: v for k, v in seed.items() if k != "text_pair"}], first)
    assert "kept" not in single["train-3"]


def test_config_checks_targets_and_edit_side():
    with pytest.raises(ConfigError, match="targets"):
        load_config(None, ["method.counterfactuals.targets=second"])
    with pytest.raises(ConfigError, match="edit_side"):
        load_config(None, ["method.counterfactuals.edit_side=hypothesis"])


def test_generation_key_follows_class_words_and_policy():
    from raydistill.methods.cod import generation_key

    cfg = load_config("recipes/bbc-cod.yaml")
    base = generation_key(cfg, BBC, "/t")
    assert generation_key(cfg, BBC, "/t", {"tech": ["web"]}) != base
    assert generation_key(cfg, BBC, "/t", {"tech": ["web"]}) != generation_key(
        cfg, BBC, "/t", {"tech": ["net"]}
    )
    other = load_config("recipes/bbc-cod.yaml", ["method.counterfactuals.targets=all"])
    assert generation_key(other, BBC, "/t") != base


# ---------------------------------------------------------------- kept side


def test_reply_naming_both_sides_with_a_changed_premise_is_rejected():
    changed = "Premise: A man is sleeping in bed.\nHypothesis: A man is indoors."
    assert split_pair_reply(changed, PREMISE, "premise", "hypothesis") == (
        None,
        REJECT_KEPT_CHANGED,
    )
    same = f"Premise: {PREMISE}\nHypothesis: A man is indoors."
    assert split_pair_reply(same, PREMISE, "premise", "hypothesis") == ("A man is indoors.", "")
    labelled = "Rewritten hypothesis (contradiction): A man is indoors."
    assert split_pair_reply(labelled, PREMISE, "premise", "hypothesis")[0] == "A man is indoors."
    plain = "A man is indoors."
    assert split_pair_reply(plain, PREMISE, "premise", "hypothesis") == (plain, "")


def test_an_edit_of_the_kept_side_is_recognised():
    # The model rewrote the premise instead of the hypothesis.
    assert edits_kept_side("A man is playing drums on a busy street.", PREMISE, HYPOTHESIS)
    assert edits_kept_side(PREMISE, PREMISE, HYPOTHESIS)
    assert not edits_kept_side("A man is indoors.", PREMISE, HYPOTHESIS)
    # A hypothesis that nearly copies its premise: its edits stay edits of it.
    premise, hyp = "A man plays a guitar", "A man plays guitar"
    assert not edits_kept_side("A man plays a piano", premise, hyp)


def test_kept_side_intact_compares_verbatim():
    orig = {"text": PREMISE, "text_pair": HYPOTHESIS}
    assert kept_side_intact(orig, {"text": PREMISE, "text_pair": "A man sleeps."}, "text_pair")
    moved = {"text": PREMISE.replace("busy", "quiet"), "text_pair": "A man sleeps."}
    assert not kept_side_intact(orig, moved, "text_pair")
    assert not kept_side_intact(orig, {"text": "x", "text_pair": HYPOTHESIS + " "}, "text")


def test_pair_inputs_put_the_kept_side_in_place():
    assert pair_inputs(["h1", "h2"], None) == ["h1", "h2"]
    assert pair_inputs(["h1"], ["p1"], "text_pair") == [("p1", "h1")]
    assert pair_inputs(["p1"], ["h1"], "text") == [("p1", "h1")]
    with pytest.raises(ValueError):
        pair_inputs(["a"], ["b", "c"])


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory):
    """A tiny random BERT classifier folder with the three NLI labels."""
    from raydistill.registry import resolve_model
    from raydistill.training.students import load_classifier

    dest = tmp_path_factory.mktemp("tiny3")
    backbone = resolve_model("tiny-bert")
    load_classifier(backbone, list(SNLI.label_names)).save_pretrained(dest)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(backbone).save_pretrained(dest)
    return str(dest)


def test_verifier_rejects_candidates_that_change_the_kept_side(tiny3):
    from raydistill.pipelines.counterfactuals import FlipVerifier

    cands = [
        "Premise: A man is sleeping in bed.\nHypothesis: A man is indoors.",  # premise moved
        "A man is playing drums on a busy street.",  # an edit of the premise
        "Hypothesis: A man is sleeping.",
        "A man is indoors.",
    ]
    batch = {
        "id": np.array(["s1"], dtype=object),
        "text": np.array([HYPOTHESIS], dtype=object),
        "kept": np.array([PREMISE], dtype=object),
        "target": np.array([2]),
        "llm_error": np.array([""], dtype=object),
        "candidates": np.array([cands], dtype=object),
    }
    v = FlipVerifier(
        tiny3,
        noun="hypothesis",
        label_names=SNLI.label_names,
        max_edit_fraction=0.5,
        edit_side="text_pair",
        pair_names=SNLI.pair_names,
    )
    out = v(dict(batch))
    rejects = json.loads(out["rejects"][0])
    assert rejects == {REJECT_KEPT_CHANGED: 2}
    assert out["num_valid"][0] == 2
    got = out["cf_text"][0] or out["closest"][0]
    assert got in ("A man is sleeping.", "A man is indoors.")
    # The teacher read pairs: logits of the chosen one equal the pair's own logits.
    if out["flipped"][0]:
        want = v.clf.logits([(PREMISE, out["cf_text"][0])])[0]
        assert np.allclose(json.loads(out["cf_logits"][0]), want, atol=1e-5)


# ---------------------------------------------------------------- tokenization


def test_pair_tokenization_and_shapes(tiny3):
    from transformers import AutoTokenizer

    from raydistill.training.classifier import Classifier, encode, row_input, tokenizer_args

    tok = AutoTokenizer.from_pretrained(tiny3)
    assert tokenizer_args(["a", "b"]) == (["a", "b"],)
    assert tokenizer_args([("a", "b"), ["c", "d"]]) == (["a", "c"], ["b", "d"])
    with pytest.raises(ValueError, match="mixes"):
        tokenizer_args(["a", ("b", "c")])
    enc = encode(tok, [(PREMISE, HYPOTHESIS)], return_tensors="pt")
    assert "token_type_ids" not in enc
    ids = enc["input_ids"][0].tolist()
    assert ids.count(tok.sep_token_id) == 2  # [CLS] premise [SEP] hypothesis [SEP]
    assert row_input({"text": "p", "text_pair": "h"}) == ("p", "h")
    assert row_input({"text": "p"}) == "p"

    clf = Classifier(tiny3)
    pair, single = (PREMISE, HYPOTHESIS), PREMISE
    together = clf.logits([single, pair, single])
    assert together.shape == (3, 3)
    assert np.allclose(together[1], clf.logits([pair])[0], atol=1e-5)
    assert np.allclose(together[0], clf.logits([single])[0], atol=1e-5)
    # The pair is not its first side alone.
    assert not np.allclose(together[1], together[0])
    logits, hidden = clf.logits_and_hidden([pair, single])
    assert logits.shape == (2, 3) and hidden.shape[0] == 2


def test_students_and_evaluation_read_pairs(tiny3):
    from transformers import AutoTokenizer

    from raydistill.training.batching import Batcher
    from raydistill.training.evaluation import Evaluator
    from raydistill.training.students import DistillStudent

    tok = AutoTokenizer.from_pretrained(tiny3)
    rows = [
        {"text": PREMISE, "text_pair": HYPOTHESIS, "label": 0, "teacher_logits": [1.0, 0, 0]},
        {
            "text": PREMISE,
            "text_pair": "A man is sleeping.",
            "label": 2,
            "teacher_logits": [0, 0, 1.0],
        },
    ]
    data = Batcher(tok, rows, 64)
    assert (data.ids == tok.sep_token_id).sum(dim=1).tolist() == [2, 2]
    single = Batcher(tok, [{"text": PREMISE, "label": 0}], 64)
    assert data.ids.shape[1] > single.ids.shape[1]
    from raydistill.registry import resolve_model

    student = DistillStudent(resolve_model("tiny-bert"), list(SNLI.label_names), num_layers=1)
    logits, _ = student(*data.batch(np.arange(2)))
    assert logits.shape == (2, 3)
    pairs = [(0, row_input_of(rows[0]), 2, row_input_of(rows[1]))]
    m = Evaluator(tok, rows, pairs, 64)(student.model)
    assert 0.0 <= m["accuracy"] <= 1.0 and "boundary_fidelity" in m


def row_input_of(row):
    from raydistill.training.classifier import row_input

    return row_input(row)


def test_teacher_annotation_reads_pairs(tiny3):
    from raydistill.pipelines.soft_labels import TeacherAnnotator
    from raydistill.training.classifier import Classifier

    batch = {
        "id": np.array(["a", "b"], dtype=object),
        "text": np.array([PREMISE, PREMISE], dtype=object),
        "text_pair": np.array([HYPOTHESIS, "A man is sleeping."], dtype=object),
    }
    out = TeacherAnnotator(tiny3)(dict(batch))
    want = Classifier(tiny3).logits([(PREMISE, HYPOTHESIS), (PREMISE, "A man is sleeping.")])
    assert np.allclose(np.stack(out["teacher_logits"]), want, atol=1e-5)


# ---------------------------------------------------------------- data


def test_custom_pair_files_load_with_their_side_names(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from pair_data import write_pair_files

    from raydistill.pipelines.datasets import load_split

    paths = write_pair_files(tmp_path)
    cfg = load_config(
        "recipes/smoke-pair-cod.yaml", [f"data.{r}_file={p}" for r, p in paths.items()]
    )
    spec = spec_for(cfg.data)
    assert spec.pair_names == ("premise", "hypothesis") and spec.num_labels == 3
    rows = load_split(cfg.data, "train")
    assert len(rows) == 600 and {"text", "text_pair", "label"} <= set(rows[0])
    generic = load_config(
        None, ["data.task=custom", "data.label_names=[a,b]", "data.text_pair_column=text_pair"]
    )
    assert spec_for(generic.data).pair_names == ("first text", "second text")
    assert spec_for(load_config(None, []).data).pair_names is None


def test_pair_teacher_has_its_own_cache_key():
    from raydistill.training.teacher import teacher_key

    cfg = load_config("recipes/smoke-pair-cod.yaml")
    spec = spec_for(cfg.data)
    alone = load_config("recipes/smoke-pair-cod.yaml", ["data.text_pair_column=null"])
    assert teacher_key(cfg.data, cfg.teacher, spec) != teacher_key(alone.data, cfg.teacher, spec)


# ---------------------------------------------------------------- serving


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("a text", "a text"),
        ([PREMISE, HYPOTHESIS], (PREMISE, HYPOTHESIS)),
        ({"text": PREMISE, "text_pair": HYPOTHESIS}, (PREMISE, HYPOTHESIS)),
        ({"text": PREMISE}, PREMISE),
        (["", ""], ("", "")),
    ],
)
def test_classify_inputs(item, expected):
    assert classify_input(item, 0) == expected


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (["only one"], r"inputs\[3\]: a sentence pair is a list of two strings .* 1 item"),
        (["a", "b", "c"], r"list of 3 item"),
        (["a", 5], r"not both strings"),
        ({"text": "a", "hypothesis": "b"}, r"unknown field\(s\) \['hypothesis'\]"),
        ({"text_pair": "b"}, r"inputs\[3\]\.text: a string is required"),
        ({"text": "a", "text_pair": None}, r"inputs\[3\]\.text_pair: a string"),
        (7, r"expected a string, a pair"),
    ],
)
def test_malformed_classify_inputs_name_the_input(item, message):
    with pytest.raises(MalformedInput, match=message):
        classify_input(item, 3)


def test_student_classifier_labels_pairs_and_texts_together(tiny3):
    from raydistill.serving.request_inputs import input_chars, input_encodable
    from raydistill.serving.student_model import StudentClassifier

    model = StudentClassifier(tiny3)
    out = model.classify([PREMISE, (PREMISE, HYPOTHESIS), [PREMISE, HYPOTHESIS]])
    assert [set(r["probs"]) for r in out] == [set(SNLI.label_names)] * 3
    assert out[1] == out[2]
    # The API's limits see both sides of a pair.
    assert input_chars((PREMISE, HYPOTHESIS)) == len(PREMISE) + len(HYPOTHESIS)
    assert not input_encodable(("ok", "\ud800"))
