"""Explanation distillation: arms, the rows each arm trains on, and the whole method on Ray.

The e2e test runs the teacher's chain through a scripted OpenAI-compatible server (the
cached request layer, real HTTP) and trains tiny causal-LM students on 2 Ray Train workers
with DeepSpeed; a rerun sends no request and trains nothing.
"""

import json
from collections import Counter
from dataclasses import replace

import pytest

from raydistill.config import ConfigError
from raydistill.methods.explain import Prepared, parse_arm, student_rows

ROW = {
    "id": "q1",
    "text": "Where do you keep a clean plate?",
    "question": "Where do you keep a clean plate?",
    "choices": ["cupboard", "oven", "garden"],
    "answer": 0,
    "explanation": "clean plates are stored in cupboards",
}


def test_arms_parse_and_bad_ones_name_themselves():
    assert parse_arm("answer") == ("answer", "human")
    assert parse_arm("multitask:revised") == ("multitask", "revised")
    assert parse_arm("multitask+cf:original") == ("multitask+cf", "original")
    for bad in ["mt:human", "multitask:teacher", "answer:revised"]:
        with pytest.raises(ConfigError, match=bad.split(":")[0]):
            parse_arm(bad)


def test_student_rows_take_the_arms_explanation_source():
    chain = {
        "q1": {
            "original": "you keep plates in a cupboard",
            "revised": "plates go in a cupboard, not an oven or a garden",
            "cf_answer": 1,
            "cf_explanation": "an oven is where plates are warmed",
        }
    }
    prep = Prepared(spec=None, rows={"q1": ROW}, dev=[], test=[], plan={}, chain=chain)
    assert student_rows(prep, ["q1"], "answer", "human")[0]["explanation"] == ""
    assert student_rows(prep, ["q1"], "multitask", "human")[0]["explanation"] == ROW["explanation"]
    assert (
        student_rows(prep, ["q1"], "multitask", "revised")[0]["explanation"]
        == chain["q1"]["revised"]
    )
    rows = student_rows(prep, ["q1"], "multitask+cf", "original")
    assert len(rows) == 2 and rows[0]["explanation"] == chain["q1"]["original"]
    cf = rows[1]
    assert cf["counterfactual"] and cf["answer"] == 1 and "oven" in cf["question"]
    assert cf["explanation"] == chain["q1"]["cf_explanation"]


def _chain_answers(payload):
    from scripted_llm import completion, last_user_message

    msg = last_user_message(payload)
    if "Rate the explanation" in msg:
        # Two judge samples: the second disagrees on contrastiveness by one point; every
        # sixth item's second sample is prose (a counted failure, never a score).
        dims = ["plausibility", "understandability", "completeness", "satisfaction"]
        first = {**dict.fromkeys(dims, 4), "contrastiveness": 3}
        second = json.dumps({**first, "contrastiveness": 4})
        if sum(map(ord, msg)) % 6 == 0:
            second = "Quite good overall."
        return 200, completion([json.dumps(first), second][: payload.get("n", 1)])
    if msg.startswith("Critique this"):
        # Some flawed, some not, and some "flawed" with nothing named (not revised).
        verdict = sum(map(ord, json.dumps(payload))) % 3
        crit = {"flaw": verdict != 1, "critique": "..." if verdict == 2 else "Say why not."}
        return 200, completion([json.dumps(crit)])
    if msg.startswith("Rewrite"):
        return 200, completion(["It is the usual place, unlike the others."])
    return 200, completion(["It is the usual place for that."])


# The method's smoke run, `recipes/smoke-explain.yaml` (53 s on 2 cores, Ray start
# included): in the default suite, as the acceptance asks.
@pytest.mark.ray
def test_explain_end_to_end_and_resume(ray_session, data_dir, tmp_path):
    from scripted_llm import ScriptedLLM
    from transformers import AutoModelForCausalLM

    from raydistill.config import load_config
    from raydistill.methods.explain import run

    with ScriptedLLM(_chain_answers) as llm:
        cfg = load_config(
            "recipes/smoke-explain.yaml",
            [
                f"out_dir={tmp_path / 'out'}",
                f"cache_dir={tmp_path / 'cache'}",
                "pool.backend=openai",
                f"pool.url={llm.base_url}",
                "pool.model=scripted",
            ],
        )
        report = run(cfg)
        sent = llm.count
        c = report["chain"]
        unnamed = c["rejects"].get("critique:unnamed_flaw", 0)
        assert c["questions"] == 16 and c["explained"] == 16 and unnamed > 0
        assert c["critiqued"] == 16 - unnamed
        assert 0 < c["flawed"] < c["critiqued"] and c["revised"] == c["flawed"]
        assert c["length_ratio_revised"] is not None and c["length_ratio_revised"] <= 1.5
        arms = {r["arm"] for r in report["results"]}
        assert arms == set(cfg.experiment.arms)
        by_arm = {r["arm"]: r for r in report["results"]}
        # cf rows are added: 16 questions + one counterfactual row each.
        assert by_arm["multitask+cf:original"]["train_rows"] == 32
        assert by_arm["answer"]["train_rows"] == 16
        for r in report["results"]:
            assert 0.0 <= r["accuracy"] <= 1.0
        assert by_arm["multitask:human"]["explanation_rougeL"] is not None
        # Kept generations, cosine and length, the judge and the report's files.
        assert by_arm["multitask:human"]["explanation_cosine"] is not None
        assert 0 < len(by_arm["multitask:human"]["examples"]) <= cfg.method.judge_examples
        j = report["judge"]
        assert {"teacher human", "teacher original", "teacher revised"} <= set(j["groups"])
        assert "student multitask:human k=16" in j["groups"]
        for g in j["groups"].values():
            assert g["parsed"] + sum(g["failures"].values()) == g["samples"]
            assert g["agreement_within_1"] in (None, 1.0)
        assert j["original_vs_revised"]["n"] >= 0
        assert report["examples"]["multitask:human"][0]["explanation"] is not None
        out = tmp_path / "out"
        recs = [json.loads(x) for x in (out / "explanations.jsonl").read_text().splitlines()]
        assert sum(r["revision"] == "no_verdict" for r in recs) == unnamed
        assert (out / "explain.png").exists() and "## The judge" in (out / "report.md").read_text()
        assert "explanations" not in report["results"][0]
        ckpt = json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[0])
        AutoModelForCausalLM.from_pretrained(ckpt["checkpoint"])
        again = run(cfg)
        assert llm.count == sent, "a rerun sent LLM requests again"
        assert "train" not in again["timings"]
        # A change to the chain retrains only the arms that read it: the answer-only and
        # human-explanation students keep their rows (one each in the ledger).
        changed = run(replace(cfg, method=replace(cfg.method, max_revision_ratio=2.0)))
        ledger = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
        trained = Counter(r["arm"] for r in ledger)
        assert trained == {
            "answer": 1,
            "multitask:human": 1,
            "multitask:revised": 2,
            "multitask+cf:original": 2,
        }
        assert {r["arm"] for r in changed["results"]} == set(cfg.experiment.arms)
        assert len(changed["results"]) == 4
