"""Explanation distillation's evaluation without Ray: kept generations, cosine and length,
the judge's aggregation (parse failures counted, agreement), prompt-prefix reuse of the
chain, the report and the benchmark table, and the MT / CF loss composition by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from raydistill.pipelines.explanations import (
    DIMENSIONS,
    explanation_similarity,
    judge_items,
    judge_paired,
    judge_summary,
    prefix_caching,
    prefix_reuse,
    student_judge_items,
    teacher_judge_items,
    teacher_judge_questions,
)
from raydistill.training.student_kinds import KindSettings, make_kind
from raydistill.training.task_metrics import kept_generations

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS = [
    {
        "id": "t1",
        "question": "Where are books?",
        "choices": ["bank", "library", "river"],
        "answer": 1,
        "explanation": "libraries lend books",
    },
    {
        "id": "t2",
        "question": "What is cold?",
        "choices": ["ice", "fire", "sun"],
        "answer": 0,
        "explanation": "ice is frozen water",
    },
    {
        "id": "t3",
        "question": "Who barks?",
        "choices": ["cat", "dog", "fish"],
        "answer": 1,
        "explanation": "dogs bark",
    },
]


def _scores(**over):
    return json.dumps({**dict.fromkeys(DIMENSIONS, 3), **over})


# ------------------------------------------------------------------ kept generations


def test_kept_generations_split_parse_and_mark_correctness():
    gen = ["library because books are lent there", "fire because it is hot", "dog", "cat"]
    kept = kept_generations(gen[:3], ROWS, 2)
    assert kept == [
        {
            "id": "t1",
            "answer": "library",
            "explanation": "books are lent there",
            "choice": 1,
            "correct": True,
        },
        {
            "id": "t2",
            "answer": "fire",
            "explanation": "it is hot",
            "choice": 1,
            "correct": False,
        },
    ]
    assert kept_generations(["maybe a bank or a library"], ROWS[:1], 5)[0]["choice"] is None


def test_generative_metrics_keep_examples_only_when_asked():
    settings = KindSettings("causal_lm", "mcqa", [], 64, 8, None, "multitask")
    preds = ["library because books", "ice", "dog because it barks"]
    plain = make_kind(settings).metrics(preds, ROWS)
    assert "examples" not in plain and "explanations" not in plain
    m = make_kind(settings, keep_examples=2).metrics(preds, ROWS)
    assert [e["id"] for e in m["examples"]] == ["t1", "t2"]
    assert m["explanations"] == ["books", "", "it barks"]  # every row: cosine and length
    assert m["answer_accuracy"] == pytest.approx(1.0)
    answer_only = KindSettings("causal_lm", "mcqa", [], 64, 8, None, "answer")
    m = make_kind(answer_only, keep_examples=5).metrics(["library", "ice", "dog"], ROWS)
    assert len(m["examples"]) == 3 and "explanations" not in m


# ------------------------------------------------------------------ cosine and length


def test_explanation_similarity_by_hand():
    vec = {
        "a b": np.array([1.0, 0.0]),
        "ref one": np.array([0.6, 0.8]),
        "c d e f": np.array([0.0, 1.0]),
        "ref two": np.array([0.0, 1.0]),
    }
    seen = []

    def embed(texts):
        seen.append(list(texts))
        return [vec[t] for t in texts]

    got = explanation_similarity(
        ["a b", "", "c d e f", "x"], ["ref one", "ref two", "ref two", ""], embed
    )
    # pairs with a reference: (a b, ref one) 0.6, ("", ref two) 0 (empty), (c d e f, ref two) 1.0
    assert got == {"pairs": 3, "empty": pytest.approx(1 / 3, abs=1e-4), "words": 3.0, "cosine": pytest.approx(1.6 / 3, abs=1e-4)}  # fmt: skip
    assert "" not in seen[0] and "x" not in seen[0]  # no empty text, no unreferenced one
    none = explanation_similarity(["", ""], ["r", "r"], lambda t: [np.ones(2)] * len(t))
    assert none["cosine"] == 0.0 and none["words"] is None and none["empty"] == 1.0


# ------------------------------------------------------------------ the judge


class FakeJudge:
    """An LLM client whose answers per key are scripted (list of candidates or an error)."""

    structured_output = False

    def __init__(self, answers):
        self.answers, self.sampling = answers, None

    def chat(self, rows, sampling):
        self.sampling = sampling
        out = []
        for r in rows:
            a = self.answers[r["key"]]
            assert r["messages"][-1]["content"].startswith("Question:")
            if a == "error":
                out.append({**r, "candidates": [], "llm_error": "HTTP 500"})
            else:
                out.append({**r, "candidates": a, "llm_error": ""})
        return out


def _item(key, group):
    return {
        "key": key,
        "group": group,
        "question": "Where are books?",
        "choices": ["bank", "library"],
        "answer": "library",
        "explanation": "libraries lend books",
    }


def test_judge_counts_every_failure_and_measures_agreement():
    llm = FakeJudge(
        {
            "a|1": [_scores(completeness=4), _scores(completeness=5, contrastiveness=1)],
            "a|2": [_scores(), "I think it is a 4 overall."],
            "a|3": "error",
            "b|1": [_scores(plausibility=9), json.dumps({"plausibility": 2})],
            "b|2": [_scores(satisfaction=1)],  # one sample of two
        }
    )
    items = [_item(k, k.split("|")[0]) for k in ["a|1", "a|2", "a|3", "b|1", "b|2"]]
    judged = judge_items(llm, items, samples=2, temperature=0.7)
    assert llm.sampling.n == 2 and llm.sampling.temperature == 0.7
    assert llm.sampling.json_schema is None  # the fake backend has no structured output
    by = {j["key"]: j for j in judged}
    assert by["a|2"]["scores"][1] is None and by["a|2"]["reasons"][1].startswith("json_")
    assert by["a|3"]["reasons"] == ["llm_error", "llm_error"]
    assert by["b|1"]["reasons"] == ["out_of_range", "missing_dimension"]
    assert by["b|2"]["reasons"] == ["", "no_sample"]
    s = judge_summary(judged)
    a, b = s["a"], s["b"]
    assert (a["items"], a["samples"], a["parsed"], a["parse_rate"]) == (3, 6, 3, 0.5)
    assert a["failures"] == {"json_no_json": 1, "llm_error": 2}
    # Only a|1 has two parsed samples: completeness 4 vs 5 (±1), contrastiveness 3 vs 1.
    assert a["agreement_pairs"] == 1
    assert a["agreement_exact"] == pytest.approx(3 / 5)
    assert a["agreement_within_1"] == pytest.approx(4 / 5)
    # Means over parsed samples, never a default for the failures.
    assert a["means"]["completeness"] == pytest.approx((4 + 5 + 3) / 3, abs=1e-3)
    assert a["means"]["contrastiveness"] == pytest.approx((3 + 1 + 3) / 3, abs=1e-3)
    assert b["parsed"] == 1 and b["means"]["satisfaction"] == 1.0
    assert b["agreement_pairs"] == 0 and b["agreement_exact"] is None
    # The most common score and its share of parsed scores: 12 of a's 15 are 3.
    assert (a["modal_score"], a["modal_share"]) == (3, 0.8)
    assert (b["modal_score"], b["modal_share"]) == (3, 0.8)


def test_judge_paired_compares_only_questions_both_have():
    def j(key, group, **over):
        return {
            "key": key,
            "group": group,
            "scores": [json.loads(_scores(**over))],
            "reasons": [""],
        }

    judged = [
        j("o|q1", "orig", completeness=2),
        j("r|q1", "rev", completeness=4),
        j("o|q2", "orig", completeness=1),
        {"key": "r|q2", "group": "rev", "scores": [None], "reasons": ["json_no_json"]},
        j("r|q3", "rev", completeness=5),
    ]
    p = judge_paired(judged, "orig", "rev")
    assert p["n"] == 1 and p["difference"]["completeness"] == 2.0
    assert p["orig"]["completeness"] == 2.0 and p["difference"]["plausibility"] == 0.0
    assert judge_paired(judged[:1], "orig", "rev") == {"n": 0}


def test_judge_items_from_students_and_teacher():
    results = [
        {
            "arm": "multitask:revised",
            "k": 8,
            "seed": 0,
            "examples": [
                {"id": "t1", "answer": "the bank", "explanation": "money", "choice": 0},
                {"id": "t2", "answer": "ice", "explanation": "", "choice": 0},
                {"id": "zz", "answer": "x", "explanation": "y", "choice": None},
                {"id": "t3", "answer": "a dog or a cat", "explanation": "barks", "choice": None},
            ],
        },
        {"arm": "answer", "k": 8, "seed": 0, "examples": None},
    ]
    items, skipped = student_judge_items(results, {r["id"]: r for r in ROWS})
    assert skipped == {"no_explanation": 1, "unknown_question": 1}
    assert [i["answer"] for i in items] == ["bank", "a dog or a cat"]  # the student's answer
    assert {i["group"] for i in items} == {"student multitask:revised k=8"}
    chain = {
        "t1": {"original": "e1", "revised": "e1 better", "revision": "revised"},
        "t2": {"original": "e2", "revised": "e2", "revision": "not_needed"},
        "t3": {"original": None, "revised": None, "revision": "not_needed"},
    }
    revised, unrevised = teacher_judge_questions(chain, 5)
    assert (revised, unrevised) == (["t1"], ["t2"])
    t = teacher_judge_items({r["id"]: r for r in ROWS}, chain, revised + unrevised)
    assert [i["key"] for i in t] == [
        "teacher human|t1",
        "teacher original|t1",
        "teacher revised|t1",
        "teacher human|t2",
        "teacher original|t2",
        "teacher revised|t2",
    ]
    assert t[0]["answer"] == "library" and t[2]["explanation"] == "e1 better"


# ------------------------------------------------------------------ prefix reuse


def test_prefix_reuse_counts_shared_prefixes_and_whole_blocks():
    sys_ = [1, 2, 3, 4]
    calls = [
        ("explain", [sys_ + [10, 11], sys_ + [20, 21], sys_ + [10, 11]]),  # last: a duplicate
        ("critique", [sys_ + [10, 11, 12, 13]]),
    ]
    tok = prefix_reuse(calls, None)
    assert tok["explain"] == {
        "requests": 2,
        "prompt_tokens": 12,
        "shared_prefix_tokens": 4,
        "reusable_tokens": 4,
        "prefill_per_request": 4.0,
        "prompt_per_request": 6.0,
    }
    assert (
        tok["critique"]["shared_prefix_tokens"] == 6
        and tok["critique"]["prefill_per_request"] == 2.0
    )
    blocks = prefix_reuse(calls, 4)
    assert blocks["critique"]["reusable_tokens"] == 4  # 6 shared → one whole 4-token block
    assert blocks["explain"]["reusable_tokens"] == 4
    assert prefix_reuse(calls, 128)["critique"]["reusable_tokens"] == 0


def test_prefix_caching_reads_the_pool_config():
    from raydistill.config import PoolConfig

    cpu = prefix_caching(PoolConfig())
    assert cpu["enabled"] is True and cpu["block_size"] == 128
    gpu = prefix_caching(PoolConfig(num_gpus=1))
    assert gpu["block_size"] == 16
    off = prefix_caching(
        PoolConfig(engine_kwargs={"enable_prefix_caching": False, "block_size": 32})
    )
    assert off["enabled"] is False and off["block_size"] == 32
    assert prefix_caching(PoolConfig(backend="hf"))["enabled"] is False
    assert prefix_caching(PoolConfig(backend="openai"))["enabled"] is None


# ------------------------------------------------------------------ summary, report, table


def _report(judge: bool):
    from raydistill.methods.explain import summarize

    results = []
    for arm, accs in [("answer", [0.40, 0.44]), ("multitask:revised", [0.46, 0.48])]:
        for seed, acc in enumerate(accs):
            results.append(
                {
                    "arm": arm,
                    "k": 8,
                    "seed": seed,
                    "accuracy": acc,
                    "explanation_rougeL": None if arm == "answer" else 0.2,
                    "explanation_cosine": None if arm == "answer" else 0.5 + seed / 10,
                    "explanation_words": None if arm == "answer" else 12.0,
                    "examples": [{"id": "t1", "answer": "library", "explanation": "books",
                                  "choice": 1, "correct": True}],
                }
            )  # fmt: skip
    mean = dict.fromkeys(DIMENSIONS, 3.0)
    group = {
        "items": 2,
        "samples": 4,
        "parsed": 3,
        "parse_rate": 0.75,
        "failures": {"json_no_json": 1},
        "means": mean,
        "agreement_pairs": 1,
        "agreement_exact": 0.6,
        "agreement_within_1": 1.0,
    }
    j = {
        "prompt_version": "explain-v1",
        "prompt": "Rate the explanation",
        "samples": 2,
        "temperature": 0.7,
        "groups": {
            "student multitask:revised k=8": group,
            "teacher original": group,
            "teacher revised": {**group, "means": {**mean, "completeness": 4.0}},
        },
        "students_not_judged": {"no_explanation": 0},
        "original_vs_revised": {
            "n": 3,
            "teacher original": mean,
            "teacher revised": {**mean, "completeness": 3.5, "contrastiveness": 2.5},
            "difference": {
                **dict.fromkeys(DIMENSIONS, 0.0),
                "completeness": 0.5,
                "contrastiveness": -0.5,
            },
        },
        "item_means": {"student multitask:revised k=8|s0:t1": {**mean, "plausibility": 5.0}},
    }
    judge_rep = j if judge else None
    chain = {
        "questions": 8,
        "explained": 8,
        "critiqued": 8,
        "flawed": 3,
        "revised": 2,
        "revision_rate": 0.25,
        "length_ratio_revised": 1.2,
        "prompt_tokens": {"explain": 800},
        "rejects": {},
        "prefix": {
            "caching": {"enabled": True, "block_size": 16, "why": "test"},
            "calls": {
                name: {"requests": 8, "prompt_tokens": 8 * p, "shared_prefix_tokens": 8 * sh,
                       "reusable_tokens": 8 * sh, "prefill_per_request": float(p - sh),
                       "prompt_per_request": float(p)}
                for name, p, sh in [("explain", 60, 32), ("critique", 90, 48), ("revise", 110, 96)]
            },
        },
    }  # fmt: skip
    from raydistill.cluster.explain_report import examples

    return {
        "task": "cqa_cose",
        "summary": summarize(results, judge_rep),
        "results": results,
        "chain": chain,
        "judge": judge_rep,
        "examples": examples(ROWS, results),
        "teacher_examples": [
            {
                "id": "t1",
                "question": "Q?",
                "answer": "a",
                "human": "h",
                "original": "o",
                "critique": "vague",
                "revised": "r",
            }
        ],  # fmt: skip
        "timings": {"train": 1.0, "total": 2.0},
    }


def test_summary_carries_judge_and_quality_per_arm():
    rep = _report(judge=True)
    by = {t["arm"]: t for t in rep["summary"]}
    assert by["multitask:revised"]["explanation_cosine"] == pytest.approx(0.55)
    assert by["multitask:revised"]["judge"]["completeness"] == 3.0
    assert by["multitask:revised"]["judge_parse_rate"] == 0.75
    assert by["answer"]["judge"] is None and by["answer"]["explanation_cosine"] is None
    assert by["answer"]["accuracy_sd"] == pytest.approx(np.std([0.40, 0.44], ddof=1))


TEACHER_ORIGINAL_ROW = (
    "| teacher original | 2 | 75.0% | 60.0% / 100.0% | – | " + " | ".join(["3.00"] * 5) + " |"
)


@pytest.mark.parametrize("judge", [True, False])
def test_report_renders_with_and_without_the_judge(tmp_path, judge):
    from raydistill.cluster.explain_report import write_report

    rep = write_report(tmp_path, _report(judge))
    md = (tmp_path / "report.md").read_text()
    assert (tmp_path / "explain.png").stat().st_size > 1000 and rep["plots"] == ["explain.png"]
    assert json.loads((tmp_path / "report.json").read_text())["plots"] == ["explain.png"]
    assert "| multitask:revised | 8 | 2 | 47.0 | 1.4 | 20.0 | 0.550 | 12.0 |" in md
    assert "| answer | 8 | 2 | 42.0 | 2.8 | – | – | – |" in md
    assert "| critique | 8 | 720 | 384 | 384 | 42.0 | 90.0 |" in md
    assert "- original: o" in md and "**library** because books" in md
    if judge:
        assert "| revised − original | +0.00 | +0.00 | +0.50 | +0.00 | -0.50 |" in md
        assert "judge plaus 5.0" in md and "60.0% | 100.0% (1 pairs)" in md
        assert "| 75% | 3.00 | 3.00 | 3.00 | 3.00 | 3.00 |" in md
        assert TEACHER_ORIGINAL_ROW in md
    else:
        assert "Judge: off" in md and "## The judge" not in md and "revised − original" not in md


def test_benchmark_table_targets_and_rendering():
    from benchmarks.explain_table import render, targets

    rep = _report(judge=True)
    t = {x["target"]: x for x in targets(rep)}
    mt = t["MT − answer-only, accuracy points (best source)"]
    assert mt["value"] == pytest.approx(5.0) and mt["met"] is True and "revised" in mt["note"]
    assert t["judge: revised − original, completeness"]["met"] is True
    assert t["judge: revised − original, contrastiveness"]["met"] is False
    assert t["e′/e of revised explanations"]["met"] is True
    assert t["prefill tokens / request: critique < explain"]["met"] is False  # 42 vs 28
    assert t["prefill tokens / request: revise < explain"]["met"] is True  # 14 vs 28
    md = render(rep, "python -m benchmarks.explain_table", 12.5, [1.0, 1.0, 1.0])
    assert "| answer | 40.0 | 44.0 | 42.0 | 2.8 | – |" in md
    assert "| multitask:revised | 46.0 | 48.0 | 47.0 | 1.4 | +5.0 | 20.0 | 0.550 | 12.0 |" in md
    assert "| judge: revised − original, contrastiveness | -0.50 | > 0 | **missed** |" in md
    assert "wall time 12.5 s" in md
    # The same judge renderer as the run report: its teacher row, word for word, and the
    # student group the report shows per arm instead.
    assert TEACHER_ORIGINAL_ROW in md
    assert "| student multitask:revised k=8 | 2 | 75.0% | 60.0% / 100.0% | – |" in md
    off = {x["target"]: x for x in targets(_report(judge=False))}
    assert off["judge: revised − original, completeness"]["met"] is None
    rep["chain"]["prefix"]["caching"]["enabled"] = False
    t = {x["target"]: x for x in targets(rep)}
    assert t["prefill tokens / request: revise < explain"]["met"] is False


# ------------------------------------------------------------------ MT / CF loss by hand


def test_multitask_cf_loss_is_the_token_mean_over_its_three_examples():
    """multitask+cf: a row makes a predict (answer) and an explain example, its
    counterfactual row one explain example (never an answer); the batch loss is the
    mean CE over all their completion tokens, computed here example by example."""
    from transformers import AutoModelForCausalLM

    from raydistill.registry import resolve_model

    settings = KindSettings("causal_lm", "mcqa", [], 64, 8, None, "multitask")
    kind = make_kind(settings)
    path = resolve_model("tiny-llama")
    tok = kind.tokenizer(path)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    cf = {**ROWS[0], "id": "t1-cf", "question": "Where are books? (explain the choice: bank)",
          "answer": 0, "explanation": "banks keep money, not books", "counterfactual": True}  # fmt: skip
    rows = [ROWS[0], cf]
    pairs = kind.pairs(rows)
    assert [t for _, t in pairs] == ["library", "libraries lend books", cf["explanation"]]
    assert [p.split(":")[0] for p, _ in pairs] == ["predict", "explain", "explain"]
    data = kind.encode(tok, rows, 64)
    with torch.no_grad():
        ours, _ = kind.loss(model, kind.batch(data, torch.arange(len(pairs))))
        total, count = 0.0, 0
        eos = tok.eos_token_id
        for prompt, target in pairs:
            p = kind._prompt_ids(tok, prompt)
            t = tok(" " + target, add_special_tokens=False)["input_ids"][:8] + [eos]
            logits = model(input_ids=torch.tensor([p + t])).logits[0]
            logp = torch.log_softmax(logits.float(), -1)
            for j, tid in enumerate(t):  # token len(p)+j is predicted at position len(p)+j-1
                total -= float(logp[len(p) + j - 1, tid])
            count += len(t)
    assert float(ours) == pytest.approx(total / count, rel=1e-4)
    # answer-only: the counterfactual row adds nothing (it names a wrong choice).
    answer = make_kind(KindSettings("causal_lm", "mcqa", [], 64, 8, None, "answer"))
    assert answer.pairs(rows) == [(answer.prompt(ROWS[0], "predict"), "library")]


# ------------------------------------------------------------------ the method's pieces


def _smoke_cfg(*over):
    from raydistill.config import load_config

    root = Path(__file__).resolve().parents[1]
    return load_config(root / "recipes" / "smoke-explain.yaml", list(over))


def test_prefix_stats_tokenize_the_chain_with_the_pool_models_template():
    from raydistill.methods.explain import prefix_stats
    from raydistill.pipelines.explanations import (
        critique_messages,
        explain_messages,
        revise_messages,
    )

    q, ch = "Where are books?", ["bank", "library", "river"]
    sent = [
        ("explain", [explain_messages(q, ch, "library"), explain_messages(q, ch, "bank")]),
        ("critique", [critique_messages(q, ch, "library", "Libraries lend books.")]),
        ("revise", [revise_messages(q, ch, "library", "Libraries lend books.", "Too vague.")]),
    ]
    st = prefix_stats(_smoke_cfg(), sent)  # hf backend, tiny-llama (SmolLM2's tokenizer)
    assert st["caching"]["enabled"] is False  # hf: token-level sharing, nothing cached
    calls = st["calls"]
    ex, cr, rv = calls["explain"], calls["critique"], calls["revise"]
    # e* shares the system prompt and question up to the answer; critique all of explain's
    # first two messages; revise all of critique's first three.
    assert 0 < ex["shared_prefix_tokens"] < ex["prompt_tokens"] / 2
    assert cr["shared_prefix_tokens"] > ex["shared_prefix_tokens"]
    assert rv["shared_prefix_tokens"] > cr["shared_prefix_tokens"]
    assert st == prefix_stats(_smoke_cfg(), sent)  # deterministic
    assert "skipped" in prefix_stats(
        _smoke_cfg("pool.backend=openai", "pool.url=http://x/v1"), sent
    )


def test_judge_stage_scores_students_and_teacher_and_pairs_revised_questions():
    from raydistill.methods.explain import Prepared, judge_stage

    class Judge:
        structured_output = False

        def chat(self, rows, sampling):
            out = []
            for r in rows:
                text = r["messages"][-1]["content"]
                c = 5 if "better" in text else 2
                out.append(
                    {**r, "candidates": [_scores(completeness=c)] * sampling.n, "llm_error": ""}
                )
            return out

    rows = {r["id"]: r for r in ROWS}
    chain = {
        "t1": {"original": "e1", "revised": "e1 better", "revision": "revised"},
        "t2": {"original": "e2", "revised": "e2", "revision": "not_needed"},
    }
    prep = Prepared(spec=None, rows=rows, dev=[], test=ROWS, plan={}, chain=chain)
    results = [
        {"arm": "multitask:human", "k": 2, "seed": 0,
         "examples": [{"id": "t3", "answer": "dog", "explanation": "it barks", "choice": 1}]}
    ]  # fmt: skip
    j = judge_stage(_smoke_cfg("method.judge=true"), prep, results, Judge())
    g = j["groups"]
    assert set(g) == {
        "student multitask:human k=2",
        "teacher human",
        "teacher original",
        "teacher revised",
    }
    assert g["teacher original"]["items"] == 2 and g["teacher original"]["parse_rate"] == 1.0
    assert g["teacher revised"]["means"]["completeness"] == pytest.approx(3.5)  # 5 and 2
    p = j["original_vs_revised"]  # t1 only: t2 was not revised
    assert p["n"] == 1 and p["difference"]["completeness"] == 3.0
    assert j["teacher_questions"] == {"revised": 1, "unrevised": 1}
    assert j["item_means"]["student multitask:human k=2|s0:t3"]["completeness"] == 2.0
