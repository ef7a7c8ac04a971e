"""The weakness loop: its pieces against hand-computed values, and the whole loop on Ray.

Unit tests: error values and seed sampling, NER span verification (absent, wrong type,
overlapping, repeated, conflicting), summary bounds, answer parsing, the diversity filter
on hand-built embeddings, plateau stopping. The e2e test runs two rounds on a real local
Ray cluster (teacher classifier via Ray Train, a scripted OpenAI-compatible generator
through the cached request layer, students on 2 Ray Train workers with DeepSpeed) and then
reruns the same command: nothing is generated or trained again.
"""

import json
import math

import numpy as np
import pytest

from raydistill.pipelines.augment_prompts import parse_sample
from raydistill.pipelines.augment_verify import (
    R_CONFLICTING,
    R_ENTITY_ABSENT,
    R_OVERLAP_LOW,
    R_OVERLAPPING,
    R_SUMMARY_EMPTY,
    R_SUMMARY_LONG,
    R_WRONG_TYPE,
    ner_sample,
    summary_problem,
)
from raydistill.pipelines.diversity import farthest_first, near_duplicates
from raydistill.pipelines.error_values import error_values, sample_seeds, seed_probabilities

TYPES = ["PER", "ORG", "LOC", "MISC"]


def test_error_values_are_exp_minus_quality():
    assert np.allclose(error_values([1.0, 0.0, 0.5]), [math.exp(-1), 1.0, math.exp(-0.5)])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        error_values([0.2, 1.5])
    with pytest.raises(ValueError, match="rows"):
        error_values([float("nan")])


def test_seed_probabilities_follow_temperature():
    e = [1.0, math.exp(-1)]
    p1 = seed_probabilities(e, 1.0)
    assert np.allclose(p1, [1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1))])
    p_half = seed_probabilities(e, 0.5)  # Err^2
    assert np.allclose(p_half, [1 / (1 + math.exp(-2)), math.exp(-2) / (1 + math.exp(-2))])
    with pytest.raises(ValueError):
        seed_probabilities(e, 0.0)


def test_sample_seeds_without_replacement_and_in_proportion():
    ids = ["a", "b", "c"]
    err = [1.0, math.exp(-1), math.exp(-1)]
    got = sample_seeds(ids, err, 2, seed=3)
    assert len(set(got)) == 2 and set(got) <= set(ids)
    # More than there are: all of them, hardest first.
    assert sample_seeds(ids, err, 5)[0] == "a" and len(sample_seeds(ids, err, 5)) == 3
    draws = [sample_seeds(ids, err, 1, seed=s)[0] for s in range(3000)]
    want = seed_probabilities(err)[0]
    assert abs(draws.count("a") / 3000 - want) < 0.03
    uni = [sample_seeds(ids, err, 1, seed=s, uniform=True)[0] for s in range(3000)]
    assert abs(uni.count("a") / 3000 - 1 / 3) < 0.03


def test_ner_verification_computes_tags_by_string_match():
    got, why = ner_sample(
        "John Smith visited Paris and met John Smith again .",
        [("John Smith", "PER"), ("Paris", "LOC")],
        TYPES,
    )
    assert why == ""
    assert got["tags"] == [
        "B-PER", "I-PER", "O", "B-LOC", "O", "O", "B-PER", "I-PER", "O", "O",
    ]  # fmt: skip
    # repeated: every occurrence is tagged, so no occurrence teaches "O" for a name
    assert sum(t == "B-PER" for t in got["tags"]) == 2


@pytest.mark.parametrize(
    "text, ents, reason",
    [
        ("Alice went home .", [("Bob", "PER")], R_ENTITY_ABSENT),
        ("Alice went home .", [("Alice", "PERSON_X")], R_WRONG_TYPE),
        (
            "New York Times reported .",
            [("New York Times", "ORG"), ("York Times", "ORG")],
            R_OVERLAPPING,
        ),
        ("Jordan spoke in Jordan .", [("Jordan", "PER"), ("Jordan", "LOC")], R_CONFLICTING),
    ],
)
def test_ner_rejects_by_reason(text, ents, reason):
    got, why = ner_sample(text, ents, TYPES)
    assert got is None and why == reason


def test_summary_bounds():
    doc = "The city council approved a new budget for schools and roads on Monday night ."
    assert summary_problem(doc, "Council approves budget for schools") == ""
    assert summary_problem(doc, "") == R_SUMMARY_EMPTY
    assert summary_problem("Short text .", "Short text and more words here") == R_SUMMARY_LONG
    assert summary_problem(doc, "Penguins dance under aurora") == R_OVERLAP_LOW


def test_summary_overlap_counts_content_words_not_stop_words():
    """Counted over all words, "The of the and a" overlapped any English document fully."""
    from raydistill.pipelines.augment_verify import R_NO_CONTENT

    doc = "The city council approved a new budget for schools and roads on Monday night ."
    assert summary_problem(doc, "The of the and a") == R_NO_CONTENT
    # 5 of 6 words are in the document, but its only content word is not.
    assert summary_problem(doc, "The and a of the penguins") == R_OVERLAP_LOW
    # Unstemmed: "approves" is not "approved", yet 3 of 4 content words are found.
    assert summary_problem(doc, "Council approves budget for the schools") == ""


def test_a_summary_echoing_the_prompts_instruction_is_refused():
    """Seen on BBC headlines with SmolLM2-135M: the instruction written back as the
    summary passed the document-overlap check (its words "the document", "main" ...)."""
    from raydistill.pipelines.augment_prompts import summary_instruction
    from raydistill.pipelines.augment_verify import R_SUMMARY_ECHO

    doc = (
        "The court said the plan would cut the time trials take , and the document sets out "
        "the main point of a five-year plan for the justice system in one line ."
    )
    echo = (
        "One line of at most 10 words that states the document's main point (like the "
        "sample's summary), with no facts that are not in the document."
    )
    ask = summary_instruction(6)
    assert summary_problem(doc, echo) == ""  # the premise: document overlap lets it through
    assert summary_problem(doc, echo, instruction=ask) == R_SUMMARY_ECHO
    assert summary_problem(doc, "Court plan cuts trial times", instruction=ask) == ""


def test_parse_sample_per_kind():
    assert parse_sample('{"text": "a fine film"}', "classification") == (
        {"text": "a fine film"},
        "",
    )
    assert parse_sample("A fine film.", "classification")[0] == {"text": "A fine film."}
    assert parse_sample('{"text": "a fine', "classification")[0] is None  # truncated JSON
    s, why = parse_sample(
        '{"text": "Bob ran .", "entities": [{"text": "Bob"}]}', "token_classification"
    )
    assert s is None and why == "bad_field"
    s, _ = parse_sample(
        'Sure! {"text": "Bob ran .", "entities": [{"text": "Bob", "type": "PER"}]}',
        "token_classification",
    )
    assert s == {"text": "Bob ran .", "entities": [("Bob", "PER")]}
    assert parse_sample('{"document": "x y z"}', "seq2seq")[0] is None
    for junk in ["", None, "{" * 5000, '{"text": 3}', "[1, 2]"]:
        got, why = parse_sample(junk, "classification")
        assert got is None or isinstance(got["text"], str)


def test_farthest_first_recomputes_after_each_pick():
    ref = np.array([[1.0, 0.0, 0.0]])
    a, b, c = [0.0, 1.0, 0.0], [0.0, 0.99, 0.14], [0.0, 0.0, 1.0]
    # a, b and c are all orthogonal to the reference; once a is picked, b (its near
    # twin) is close to the chosen set and c is the farthest.
    assert farthest_first(np.array([a, b, c]), ref, 2) == [0, 2]
    assert farthest_first(np.array([a, b, c]), ref, 10) == [0, 2, 1]
    assert farthest_first(np.array([a]), np.zeros((0, 3)), 1) == [0]


def test_near_duplicates_keep_the_first_of_a_pair():
    texts = [
        "the film is a warm and funny story about two old friends on a road trip",
        "the film is a warm and funny story about two old friends on a road trip !",
        "an entirely different sentence about the stock market falling sharply today",
    ]
    assert near_duplicates(texts) == [False, True, False]
    assert near_duplicates(texts[2:], reference=texts[2:]) == [True]


def test_embed_uses_the_real_model_quietly(capfd, caplog):
    """MiniLM embeddings are unit vectors that put paraphrases closer than unrelated text,
    and no tqdm bar reaches the job's log (the stage's console line is the progress) even
    with INFO logging, as a job's driver log has it (sentence-transformers shows its bar
    by default at INFO)."""
    import logging

    from raydistill.pipelines.diversity import embed
    from raydistill.registry import resolve_model

    caplog.set_level(logging.INFO, logger="sentence_transformers")
    e = embed(
        ["a warm, funny film", "a funny and warm movie", "stocks fell sharply today"],
        resolve_model("all-minilm-l6-v2"),
    )
    assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2
    err = capfd.readouterr().err
    assert "Batches" not in err  # the encode bar (model loading has its own)


def test_plateau_stops_after_patience_rounds_and_keeps_the_best():
    from raydistill.methods.weakness import plateau_step

    st = {"best": (0.5, 0), "bad": 0, "stopped": False}
    plateau_step(st, 0.6, 1, 2)
    plateau_step(st, 0.6, 2, 2)  # a tie is not a gain
    assert st["best"] == (0.6, 1) and not st["stopped"]
    plateau_step(st, 0.55, 3, 2)
    assert st["stopped"] and st["best"] == (0.6, 1)


# ----------------------------------------------------------------- the loop on Ray

POS = [
    "a wonderful , moving film with brilliant acting and a warm heart",
    "an utterly delightful and charming story that made me smile",
    "the best comedy of the year , sharp , warm and very funny",
    "a gripping , beautiful movie i would happily watch again",
]
NEG = [
    "a dull , tedious mess with awful acting and no story at all",
    "a boring and pointless waste of two hours",
    "the worst film of the year , flat , lifeless and clumsy",
    "an awful , tiresome movie that never finds its tone",
]


def _answers(payload):
    from scripted_llm import completion, last_user_message

    msg = last_user_message(payload)
    n = int((payload or {}).get("n") or 1)
    src = POS if "clearly positive" in msg else NEG
    s = int(payload.get("seed") or 0)
    # Every third answer is broken JSON: it must be counted as a reject, not trained on.
    return 200, completion(
        [
            '{"text": "' + src[(i + s) % 4] + '" , broken'
            if i % 3 == 2
            else json.dumps({"text": f"{src[(i + s) % 4]} , take {s % 89 + i}"})
            for i in range(n)
        ]
    )


def _smoke_cfg(tmp_path, llm, *overrides: str):
    """The smoke recipe against a scripted OpenAI-compatible server, in tmp folders."""
    from raydistill.config import load_config

    return load_config(
        "recipes/smoke-weakness.yaml",
        [
            f"out_dir={tmp_path / 'out'}",
            f"cache_dir={tmp_path / 'cache'}",
            "data.teacher_train_rows=600",
            "teacher.epochs=1",
            "pool.backend=openai",
            f"pool.url={llm.base_url}",
            "pool.model=scripted",
            *overrides,
        ],
    )


# The method's smoke run (~3-4 min on 2 cores): in `make test-slow`, which CI runs.
@pytest.mark.slow
@pytest.mark.ray
def test_weakness_loop_end_to_end_and_resume(ray_session, data_dir, tmp_path):
    from scripted_llm import ScriptedLLM
    from transformers import AutoModelForSequenceClassification

    from raydistill.methods.weakness import run

    with ScriptedLLM(_answers) as llm:
        cfg = _smoke_cfg(tmp_path, llm, "experiment.arms=[loop, nodiv, human]")
        report = run(cfg)
        sent = llm.count
        assert sent > 0
        out = tmp_path / "out"
        assert (out / "report.md").exists() and (out / "learning_curve.png").exists()
        rounds = report["rounds"]
        assert {r["loop"] for r in rounds} == {"loop-k8-s0", "nodiv-k8-s0"}
        files = sorted(out.glob("weakness/*/*/round_*.json"))
        cands = [c for f in files for c in json.loads(f.read_text())["candidates"]]
        accepted = [c for c in cands if c["verdict"] == "accepted"]
        assert accepted, "no generated sample was accepted"
        # Lineage on every candidate; every one asked for is accounted for.
        for c in cands:
            assert {"parent_id", "round", "arm", "prompt_hash", "verdict", "reason"} <= set(c)
            assert c["verdict"] == "accepted" or c["reason"]
        assert sum(r["asked"] for r in rounds) == len(cands)
        reasons = {c["reason"] for c in cands if c["verdict"] == "rejected"}
        assert any(r.startswith("json_") for r in reasons), reasons
        # Accepted samples train the next student: its training set grew by exactly them.
        res = {(r["arm"], r["round"]): r for r in report["results"]}
        loop_acc = [c for c in accepted if c["arm"] == "loop" and c["round"] == 1]
        assert res[("loop", 1)]["train_size"] == 8 + len(loop_acc)
        assert res[("loop", 1)]["generated"] == len(loop_acc)
        # Where a student's time went, and which LLM wrote the samples.
        assert 0 < res[("loop", 1)]["step_s"] < res[("loop", 1)]["train_s"]
        assert res[("loop", 1)]["steps"] > 0
        assert report["generator"] == {"backend": "openai", "model": "scripted"}
        # The human arm trains on as many human labels as the loop arm generated.
        assert res[("human", 1)]["train_size"] == res[("loop", 1)]["train_size"]
        ckpt = json.loads((out / "results.jsonl").read_text().splitlines()[-1])["checkpoint"]
        AutoModelForSequenceClassification.from_pretrained(ckpt)

        again = run(cfg)
        assert llm.count == sent, "a rerun sent LLM requests again"
        assert "train" not in again["timings"], "a rerun retrained students"
        assert again["summary"] == report["summary"]

        # An interrupted round: the driver died after the loop arm's samples of that
        # round were written, before nodiv's were and before any of its students
        # finished (a ledger line torn mid-write). The rerun keeps the loop arm's file
        # as it is, writes nodiv's again from the request cache, retrains exactly that
        # round's students, and ends where the uninterrupted run ended.
        assert max(r["round"] for r in report["results"]) >= 2, "the loop stopped early"
        # A round whose loops accepted nothing trains no student (its rows are `reused`,
        # with no ledger line): the interruption hits the last round that trained.
        last = max(r["round"] for r in report["results"] if "reused" not in r)
        assert last >= 1
        ledger = out / "results.jsonl"
        lines = ledger.read_text().splitlines()
        keep = [ln for ln in lines if json.loads(ln).get("round") != last]
        dropped = len(lines) - len(keep)
        assert dropped > 0
        ledger.write_text("\n".join(keep) + '\n{"job": "torn-mid-wri')
        loop_file = next(out.glob(f"weakness/*/loop-k8-s0/round_{last}.json"))
        loop_bytes = loop_file.read_bytes()
        nodiv_file = next(out.glob(f"weakness/*/nodiv-k8-s0/round_{last}.json"))
        nodiv_cands = json.loads(nodiv_file.read_text())["candidates"]
        nodiv_file.unlink()
        resumed = run(cfg)
        assert llm.count == sent, "the resumed round sent requests the cache holds"
        assert "train" in resumed["timings"]
        after = ledger.read_text().splitlines()
        assert after[len(keep)] == '{"job": "torn-mid-wri', "the torn line was overwritten"
        fresh = [json.loads(ln) for ln in after[len(keep) + 1 :]]
        assert sorted(r["job"] for r in fresh) == sorted(
            r["job"] for r in report["results"] if r["round"] == last
        ), "the rerun trained other students than the interrupted round's"
        assert len(fresh) == dropped
        assert loop_file.read_bytes() == loop_bytes, "a complete round file was rewritten"
        again_nodiv = json.loads(nodiv_file.read_text())["candidates"]
        assert [c["id"] for c in again_nodiv] == [c["id"] for c in nodiv_cands]
        for a, b in zip(resumed["summary"], report["summary"], strict=True):
            assert a.keys() == b.keys()
            for key, va in a.items():
                if isinstance(va, float):
                    assert va == pytest.approx(b[key], abs=0.02), key
                else:
                    assert va == b[key], key


@pytest.mark.ray
def test_a_round_that_accepts_nothing_trains_no_student(ray_session, data_dir, tmp_path):
    """Every answer is broken: round 1 adds no row to any loop, so no student is trained
    again (the same rows would make the same student); the rounds still count, their
    rejects are recorded by reason, and the plateau rule stops the loop on the ties."""
    from scripted_llm import ScriptedLLM, completion

    from raydistill.methods.weakness import run

    def broken(payload):
        return 200, completion(['{"text": "cut off'] * int(payload.get("n") or 1))

    with ScriptedLLM(broken) as llm:
        cfg = _smoke_cfg(tmp_path, llm, "experiment.arms=[loop, human]", "method.patience=1")
        report = run(cfg)
        assert llm.count > 0
    ledger = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["job"] for r in ledger] == ["fewshot-k8-s0-r0"]
    assert "train" in report["timings"]  # round 0 trained; nothing after it
    res = {(r["arm"], r["round"]): r for r in report["results"]}
    few = res[("fewshot", 0)]
    for arm in ("loop", "human"):
        row = res[(arm, 1)]
        assert row["reused"] == "fewshot-k8-s0-r0" and row["train_s"] == 0.0
        assert row["checkpoint"] == few["checkpoint"] and row["test_score"] == few["test_score"]
        assert (arm, 2) not in res  # patience 1: the tie stopped the loop
    (rnd,) = report["rounds"]
    assert rnd["accepted"] == 0 and rnd["asked"] > 0
    assert sum(rnd["rejects"].values()) == rnd["asked"]
    assert all(r.startswith("json_") for r in rnd["rejects"]), rnd["rejects"]


def test_ner_schema_constrains_entity_types_to_the_task():
    from raydistill.pipelines.augment_prompts import NER_SCHEMA, schema_for

    s = schema_for("token_classification", TYPES)
    typ = s["properties"]["entities"]["items"]["properties"]["type"]
    assert typ == {"type": "string", "enum": TYPES}
    # The shared constant is not mutated; classification keeps its schema.
    assert "enum" not in NER_SCHEMA["properties"]["entities"]["items"]["properties"]["type"]
    assert schema_for("classification", TYPES) == schema_for("classification")


@pytest.mark.parametrize("task", ["sst2", "bbc_news", "bbc_headlines", "conll2003"])
def test_structured_output_schema_for_every_task_kind(task):
    """generate_many asks for a schema per round; a classification task's label names
    ("negative") are not BIO tags and must not be read as ones (a CI failure once)."""
    from raydistill.pipelines.augment import task_schema
    from raydistill.pipelines.augment_prompts import schema_for
    from raydistill.pipelines.tasks import TASKS

    spec = TASKS[task]
    got = task_schema(spec)
    if spec.kind == "token_classification":
        typ = got["properties"]["entities"]["items"]["properties"]["type"]
        assert typ["enum"] == ["PER", "ORG", "LOC", "MISC"]
    else:
        assert got == schema_for(spec.kind)
