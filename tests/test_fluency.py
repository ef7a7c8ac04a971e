"""Fluency of counterfactual edits: scorer arithmetic, whole-word vocabulary, ranking of
flips (edit size, then fluency), the threshold's rejects, records and counterfactuals.md.
No Ray: the scorer runs on tiny-llama (random weights, SmolLM2's tokenizer)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from raydistill.pipelines.counterfactuals import choose_counterfactual, rank_flips
from raydistill.pipelines.edits import edit_window, inserted_words
from raydistill.pipelines.fluency import (
    RECORD_FIELDS,
    fluency_fields,
    fluency_summary,
    oov_words,
)

ORIG = "a gorgeous , witty , seductive movie ."
SMOKE = str(Path(__file__).resolve().parents[1] / "recipes" / "smoke-cod.yaml")


# ------------------------------------------------------------------ pure text logic


def test_inserted_words_are_the_substituted_and_added_words():
    assert inserted_words("a great film", "a dull film") == ["dull"]
    assert inserted_words("a great film", "a truly great film !") == ["truly"]
    assert inserted_words("a great film", "a film") == []
    # Case and punctuation are not words; numbers are not inserted words.
    assert inserted_words("It was fine.", "It was 10 warrantitude!") == ["warrantitude"]


def test_edit_window_keeps_short_texts_whole_and_cuts_long_ones_at_spaces():
    a, b, head, tail = edit_window("a great film", "a dull film", 200)
    assert (a, b, head, tail) == ("a great film", "a dull film", False, False)
    left, right = "one two three four five six " * 10, " seven eight nine ten" * 10
    orig, edit = left + "great" + right, left + "awful" + right
    a, b, head, tail = edit_window(orig, edit, 20)
    assert head and tail and a.replace("great", "awful") == b
    assert "great" in a and len(a) < 70  # the change, ~20 characters each side
    assert a.split()[0] in orig.split() and a.split()[-1] in orig.split()  # whole words
    # An edit at the very start keeps no more than its right-hand context.
    a, b, head, tail = edit_window("great" + right, "awful" + right, 20)
    assert not head and tail and a.startswith("great")


def test_oov_words_ask_the_vocabulary_about_stems():
    vocab = {"dull", "would", "film"}
    got = oov_words(["dull", "warrantitude", "would't", "film's", "reboids"], vocab.__contains__)
    assert got == ["warrantitude", "reboids"]


def test_fluency_fields_and_summary_arithmetic():
    f = fluency_fields(-3.0, -3.5, ["dull"], [])
    assert f == {
        "lp_orig": -3.0,
        "lp_edit": -3.5,
        "lp_delta": -0.5,
        "inserted_words": ["dull"],
        "oov_words": [],
    }
    assert set(f) == set(RECORD_FIELDS)
    recs = [
        f,
        fluency_fields(-2.0, -1.0, ["x"], ["x"]),
        {"lp_delta": None},  # not scored (a seed without a flip): left out
    ]
    s = fluency_summary(recs, model="m")
    assert s["n"] == 2 and s["mean_delta"] == 0.25 and s["share_with_oov"] == 0.5
    assert s["mean_lp_orig"] == -2.5 and s["share_delta_negative"] == 0.5 and s["model"] == "m"
    assert fluency_summary([{"lp_delta": None}]) is None


# ------------------------------------------------------------------ ranking and threshold


def _stub_fluency(deltas: dict[str, float], calls: list | None = None):
    def fn(original, texts):
        if calls is not None:
            calls.append(list(texts))
        return [{"delta": deltas[t], "lp_delta": deltas[t]} for t in texts]

    return fn


def test_rank_flips_edit_size_first_then_fluency_then_order():
    flips = [
        {"text": "b", "edit_words": 1, "fluency": {"delta": -2.0}},
        {"text": "c", "edit_words": 2, "fluency": {"delta": 0.5}},
        {"text": "a", "edit_words": 1, "fluency": {"delta": -0.1}},
        {"text": "d", "edit_words": 1},  # unscored: after the scored ones of its size
        {"text": "e", "edit_words": 1, "fluency": {"delta": float("nan")}},
    ]
    assert [f["text"] for f in rank_flips(flips)] == ["a", "b", "d", "e", "c"]


def test_choose_prefers_the_fluent_flip_among_equal_edits():
    cands = [
        "a warrantitude , witty , seductive movie .",  # 1 word, invented
        "a dull , witty , seductive movie .",  # 1 word, fluent
        "a dull , witless , repellent movie .",  # 3 words
    ]
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.95, 0.05]])  # all flip to 0
    calls: list = []
    fl = _stub_fluency({cands[0]: -2.0, cands[1]: -0.2, cands[2]: 0.1}, calls)
    res = choose_counterfactual(ORIG, cands, probs, target=0, fluency=fl)
    assert res["flipped"] and res["text"] == cands[1] and res["fluency"]["delta"] == -0.2
    assert calls == [cands[:2]]  # only the smallest edits were scored
    assert res["not_fluent"] == 0 and res["had_flip"]
    # Without a fluency LM: the first smallest edit, as before.
    plain = choose_counterfactual(ORIG, cands, probs, target=0)
    assert plain["text"] == cands[0] and "fluency" not in plain


def test_threshold_drops_non_fluent_flips_and_counts_them():
    cands = [
        "a warrantitude , witty , seductive movie .",
        "a reboids , witty , seductive movie .",
        "a dull , witless , repellent movie .",
    ]
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.95, 0.05]])
    fl = _stub_fluency({cands[0]: -2.0, cands[1]: -1.5, cands[2]: -0.3})
    res = choose_counterfactual(ORIG, cands, probs, 0, fluency=fl, min_fluency_delta=-0.5)
    # Both one-word flips are dropped; the fluent three-word one is kept.
    assert res["flipped"] and res["text"] == cands[2] and res["not_fluent"] == 2
    none = choose_counterfactual(ORIG, cands, probs, 0, fluency=fl, min_fluency_delta=0.0)
    assert not none["flipped"] and none["not_fluent"] == 3 and none["had_flip"]
    # The seed gets feedback for the next round all the same.
    assert none["closest"] == cands[2]


def test_verifier_counts_not_fluent_rejects_and_returns_fluency(monkeypatch):
    from raydistill.pipelines.counterfactuals import FlipVerifier
    from raydistill.registry import resolve_model

    v = FlipVerifier(resolve_model("tiny-bert"), fluency_model="unused", min_fluency_delta=-0.5)

    class FlipsAll:  # every candidate flips to class 0
        num_labels = 2

        def logits_and_hidden(self, inputs):
            n = len(inputs)
            return np.tile([[2.0, -2.0]], (n, 1)), np.zeros((n, 1, 4))

    v.clf = FlipsAll()
    deltas = {"a dull movie": -0.1, "a warrantitude movie": -3.0, "a bad movie": -0.2}
    monkeypatch.setattr(v, "_fluency", _stub_fluency(deltas))
    batch = {
        "id": np.array(["s1"], dtype=object),
        "text": np.array(["a good movie"], dtype=object),
        "target": np.array([0]),
        "llm_error": np.array([""], dtype=object),
        "candidates": np.array([list(deltas)], dtype=object),
    }
    out = v(batch)
    assert out["cf_text"][0] == "a dull movie" and out["had_flip"][0]
    assert json.loads(out["rejects"][0])["not_fluent"] == 1
    assert json.loads(out["fluency"][0])["delta"] == -0.1


def test_llm_record_carries_fluency_and_unfiltered_flip():
    from raydistill.pipelines.counterfactual_records import llm_record

    p = {"id": "s1", "text": "a good movie", "label": 1, "target": 0, "attempts": 6}
    p.update(tokens=10, had_flip=True)
    fl = dict(fluency_fields(-4.0, -4.2, ["dull"], []), delta=-0.2)
    r = {"cf_text": "a dull movie", "edit_words": 1, "cf_logits": [1.0, 0.0]}
    r.update(cf_hidden=[[0.0]], fluency=json.dumps(fl))
    rec = llm_record(p, r, "llm:x", 1, True)
    assert rec["lp_delta"] == -0.2 and rec["inserted_words"] == ["dull"]
    assert rec["original_text"] == "a good movie" and rec["flip_unfiltered"]
    # A seed whose flips were all dropped as not fluent: not flipped, flipped unfiltered.
    lost = llm_record(p, dict(r, cf_text="", fluency=""), "llm:x", 2, False)
    assert not lost["flipped"] and lost["flip_unfiltered"] and lost["lp_delta"] is None


def test_saved_records_keep_columns_the_first_row_lacks(tmp_path):
    from raydistill.pipelines.counterfactual_records import load_records, save_records

    old = {"id": "a/cf", "flipped": True}  # cached before fluency existed
    new = {"id": "b/cf", "flipped": True, "lp_delta": -0.3, "oov_words": ["zz"]}
    save_records([old, new], tmp_path / "r.parquet")
    back = load_records(tmp_path / "r.parquet")
    assert back[1]["lp_delta"] == -0.3 and back[1]["oov_words"] == ["zz"]
    assert back[0]["lp_delta"] is None


# ------------------------------------------------------------------ the scorer itself


@pytest.fixture(scope="module")
def scorer():
    from raydistill.pipelines.fluency import FluencyScorer
    from raydistill.registry import resolve_model

    return FluencyScorer(resolve_model("tiny-llama"), batch_tokens=24)


def test_scorer_matches_a_plain_forward_and_batching_changes_nothing(scorer):
    import torch

    texts = ["a gorgeous , witty , seductive movie .", "dull", "the plot is thin but fun"]
    got = scorer.score(texts)
    for text, lp in zip(texts, got, strict=True):
        ids = torch.tensor([scorer._ids(text)])
        with torch.no_grad():
            logp = torch.log_softmax(scorer.model(input_ids=ids).logits.float(), -1)
        want = logp[0, :-1].gather(-1, ids[0, 1:, None]).mean().item()
        assert lp == pytest.approx(want, abs=1e-4)
    # batch_tokens=24 put these in several padded batches; scored alone they agree.
    scorer._lp.clear()
    alone = [scorer.score([t])[0] for t in texts]
    assert alone == pytest.approx(got, abs=1e-4)
    assert all(lp < 0 for lp in got)


def test_identical_edit_has_zero_delta_and_a_changed_one_does_not(scorer):
    same = scorer.fluency(ORIG, ORIG)
    assert same["delta"] == 0.0 and same["inserted_words"] == [] and same["oov_words"] == []
    f = scorer.fluency(ORIG, "a gorgeous , witty , warrantitude movie .")
    assert f["delta"] == pytest.approx(f["lp_edit"] - f["lp_orig"], abs=2e-4)
    assert f["delta"] != 0.0 and f["inserted_words"] == ["warrantitude"]
    assert not math.isnan(f["lp_edit"])


def test_whole_words_are_single_tokens_after_a_space(scorer):
    # SmolLM2's BPE: " the" and " movie" are one token each ("Ġthe"), "warrantitude" is not.
    assert scorer.is_whole_word("the") and scorer.is_whole_word("movie")
    assert scorer.is_whole_word("Movie")  # its lower-case form is whole
    assert not scorer.is_whole_word("warrantitude")
    f = scorer.fluency("a good movie", "a warrantitude movie")
    assert f["oov_words"] == ["warrantitude"]
    assert scorer.fluency("a good movie", "a bad movie")["oov_words"] == []


# ------------------------------------------------------------------ config, cache key, reports


def test_threshold_needs_a_model_and_fluency_settings_key_the_generations():
    from raydistill.config import ConfigError, CounterfactualConfig, load_config
    from raydistill.methods.cod import generation_key
    from raydistill.pipelines.tasks import get_task

    with pytest.raises(ConfigError, match="min_fluency_delta needs a fluency_model"):
        CounterfactualConfig(fluency_model=None, min_fluency_delta=-0.5)
    spec = get_task("sst2")

    def key(*overrides):
        return generation_key(load_config(SMOKE, list(overrides)), spec, "t")

    on = key()
    assert key("method.counterfactuals.min_fluency_delta=-0.5") != on
    assert key("method.counterfactuals.fluency_model=gemma3-270m") != on  # smoke: tiny-llama
    off = key("method.counterfactuals.fluency_model=null")
    assert off != on
    # Fluency off: the selection is the pre-fluency one, and so is the key (the hash of
    # the generation settings without the two fluency fields).
    from raydistill.config import stable_hash
    from raydistill.methods.cod import PROMPT_VERSION

    cfg = load_config(SMOKE, ["method.counterfactuals.fluency_model=null"])
    gen = {
        k: v
        for k, v in cfg.method.counterfactuals.__dict__.items()
        if k not in ("fluency_model", "min_fluency_delta", "shown_paragraphs")
    }
    old = stable_hash(
        {
            "task": spec.name,
            "backend": cfg.pool.backend,
            "model": cfg.pool.model,
            "url": cfg.pool.url,
            "gen": gen,
            "teacher": "t",
            "prompt": PROMPT_VERSION,
        }
    )
    assert off == old
    # A setting added later keeps the key of the records made before it while unset.
    assert key("method.counterfactuals.shown_paragraphs=1") != on


def _records():
    scored = fluency_fields(-3.1, -4.6, ["warrantitude"], ["warrantitude"])
    return [
        {
            "id": "s1/cf",
            "source": "llm:smollm2-135m-instruct",
            "text": "may be surprised at the variety of warrantitude | here",
            "original_text": "may be surprised at the variety of tones | here",
            "label": 0,
            "parent_label": 1,
            "flipped": True,
            "edit_words": 1,
            **scored,
        },
        {
            "id": "s2/cf",
            "source": "llm:smollm2-135m-instruct",
            "text": "",
            "original_text": "dirty jokes",
            "label": 1,
            "parent_label": 0,
            "flipped": False,
            "edit_words": -1,
            **RECORD_FIELDS,
        },
    ]


def test_counterfactuals_md_shows_fluency_per_edit():
    from raydistill.cluster.report import render_counterfactuals_md

    summary = fluency_summary(_records(), model="gemma3-270m")
    md = render_counterfactuals_md(
        _records(), task="sst2", label_names=["negative", "positive"], fluency=summary
    )
    rows = [line for line in md.splitlines() if line.startswith("| may") or "dirty" in line]
    assert rows[0] == (
        "| may be surprised at the variety of tones \\| here (positive) | may be surprised at "
        "the variety of warrantitude \\| here (negative) | 1 | yes | -3.10 → -4.60 (-1.50) | "
        "warrantitude | warrantitude |"
    )
    assert rows[1] == "| dirty jokes (negative) | – (positive) | – | no | – | – | – |"
    assert "mean Δ log-prob/token -1.500" in md and "100% with an out-of-vocabulary" in md
    assert "n = 1 (LM: gemma3-270m)" in md


def test_counterfactuals_md_shows_the_changed_part_of_a_long_review():
    from raydistill.cluster.report import counterfactual_rows

    filler = " ".join(f"w{i}" for i in range(200))
    rec = dict(_records()[0], original_text=f"{filler} great {filler}")
    rec["text"] = f"{filler} awful {filler}"
    (row,) = counterfactual_rows([rec], ["negative", "positive"], context=20)
    assert row.startswith("| … ") and " great " in row and " awful " in row
    assert len(row) < 300


def test_report_md_lists_fluency_and_the_flip_rate_without_the_threshold():
    from raydistill.cluster.report import render_markdown

    fl = fluency_summary(_records(), model="gemma3-270m", min_fluency_delta=-0.5)
    human = fluency_summary([fluency_fields(-3.0, -3.1, ["bad"], [])], model="gemma3-270m")
    report = {
        "task": "imdb",
        "summary": [],
        "cod_gains": [],
        "counterfactuals": {
            "flip_rate": 0.5,
            "flip_rate_unfiltered": 0.75,
            "fluency": fl,
            "fluency_human": human,
        },
    }
    md = render_markdown(report)
    assert "- flip_rate without the fluency threshold (-0.5): 0.75" in md
    assert "- fluency of the LLM edits: mean Δ log-prob/token -1.500" in md
    assert "- fluency of the human CAD edits: mean Δ log-prob/token -0.100" in md


def test_human_cad_edits_are_scored_as_the_reference():
    from raydistill.pipelines.counterfactuals import human_counterfactual_records
    from raydistill.registry import resolve_model

    seeds = [
        {"id": "a", "text": "a gorgeous , witty movie .", "label": 1},
        {"id": "b", "text": "the plot is thin and dull .", "label": 0},
    ]
    human = {
        "a": {"text": "a tedious , witless movie .", "label": 0},
        "b": {"text": "the plot is thin and warrantitude .", "label": 1},
    }
    records, stats = human_counterfactual_records(
        seeds, human, resolve_model("tiny-bert"), 32, resolve_model("tiny-llama")
    )
    assert [r["inserted_words"] for r in records] == [["tedious", "witless"], ["warrantitude"]]
    assert records[1]["oov_words"] == ["warrantitude"]
    assert all(r["lp_delta"] is not None and r["original_text"] for r in records)
    assert fluency_summary(records)["n"] == 2
    # Without a fluency LM the records still have every field, unscored.
    plain, _ = human_counterfactual_records(seeds, human, resolve_model("tiny-bert"), 32)
    assert plain[0]["lp_delta"] is None and plain[0]["inserted_words"] == []


def test_human_reference_fluency_is_scored_once_then_read_from_the_cache(tmp_path, monkeypatch):
    """IMDB's human CAD edits are the fluency reference: scored by the LM on the first run,
    read back from the cache dir on a rerun (the LM is not loaded again)."""
    from raydistill.config import load_config
    from raydistill.methods import cod
    from raydistill.pipelines import counterfactual_records
    from raydistill.pipelines.datasets import load_human_counterfactuals

    cfg = load_config(
        SMOKE,
        [
            "data.task=imdb",
            f"cache_dir={tmp_path}",
            "method.counterfactuals.fluency_model=tiny-llama",
        ],
    )
    human = load_human_counterfactuals(cfg.data, "train")
    from raydistill.pipelines.datasets import load_split

    seeds = [r for r in load_split(cfg.data, "train") if r["id"] in human][:2]
    first = cod.human_reference_fluency(cfg, seeds)
    assert first["n"] == 2 and first["source"] == "human:cad"
    assert len(list((tmp_path / "fluency").glob("human-*.json"))) == 1

    def boom(*a, **k):
        raise AssertionError("rescored instead of read from the cache")

    monkeypatch.setattr(counterfactual_records, "human_fluency", boom)
    assert cod.human_reference_fluency(cfg, seeds) == first
    # Other seeds are other pairs: scored anew (here: the patched scorer is reached).
    with pytest.raises(AssertionError, match="rescored"):
        cod.human_reference_fluency(cfg, seeds[:1])
