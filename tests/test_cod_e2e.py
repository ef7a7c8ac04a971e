"""The whole CoD path on a real local Ray cluster, with tiny models.

Teacher trained with Ray Train → one Ray Data annotation pass → Ray Data generation through
the LLM request layer with teacher verification → students on 2 Ray Train workers with
DeepSpeed → HF checkpoints → evaluation → report files. Then a rerun resumes without
retraining anything and without sending a request.

The generator is a scripted OpenAI-compatible server (`pool.backend=openai`) answering
each swap request with strong sentiment words of both polarities: a random tiny LLM
(the smoke recipe's `hf` pool, tested in test_teacher_pool_serve.py) flips no seed, and
a run with zero counterfactuals would test nothing of CoD. Here the teacher must verify
at least one flip and the CoD arms must train on it.
"""

import json

import pytest

from raydistill.config import load_config

pytestmark = pytest.mark.ray


SWAP_WORDS = ["awful", "wonderful", "terrible", "brilliant", "dull", "moving"]


def _swap_answers(payload):
    from scripted_llm import completion

    n = int((payload or {}).get("n") or 1)
    return 200, completion([SWAP_WORDS[i % len(SWAP_WORDS)] for i in range(n)])


@pytest.fixture(scope="module")
def generator():
    from scripted_llm import ScriptedLLM

    with ScriptedLLM(_swap_answers) as llm:
        yield llm


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, ray_session, data_dir, generator):
    from raydistill.methods.cod import run

    out = tmp_path_factory.mktemp("smoke")
    cache = tmp_path_factory.mktemp("cache")
    cfg = load_config(
        "recipes/smoke-cod.yaml",
        [
            f"out_dir={out}",
            f"cache_dir={cache}",
            "data.teacher_train_rows=1500",
            "method.counterfactuals.rounds=2",
            "pool.backend=openai",
            f"pool.url={generator.base_url}",
            "pool.model=scripted-swaps",
        ],
    )
    report = run(cfg)
    return cfg, out, report


def test_report_files_and_schema(smoke_run):
    cfg, out, report = smoke_run
    for name in (
        "report.md",
        "report.json",
        "accuracy_vs_k.png",
        "counterfactuals.parquet",
        "results.jsonl",
    ):
        assert (out / name).exists(), name
    data = json.loads((out / "report.json").read_text())
    methods = {r["arm"] for r in data["results"]}
    assert methods == set(cfg.experiment.arms)
    for r in data["results"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["fidelity"] <= 1.0
        assert r["k"] == 8 and r["seed"] == 0
    c = data["counterfactuals"]
    assert 0.0 <= c["flip_rate"] <= 1.0 and c["tokens_per_s"] > 0
    assert c["seeds"] == 4  # k/2 originals of the one seed
    assert c["seeds"] == c["flipped"] + c["no_counterfactual"]
    assert c["flipped"] >= 1, c  # the teacher verified at least one counterfactual
    llm = c["this_run"]["llm"]
    assert llm["requests_sent"] > 0 and llm["errors"] == {}


def test_counterfactual_records_are_complete(smoke_run):
    import pyarrow.parquet as pq

    _cfg, out, _ = smoke_run
    rows = pq.read_table(out / "counterfactuals.parquet").to_pylist()
    assert len(rows) == 4
    for r in rows:
        assert {"id", "parent_id", "source", "flipped", "attempts", "edit_words"} <= set(r)
        assert r["source"] == "llm:scripted-swaps" and r["id"] == f"{r['parent_id']}/cf"
        assert r["attempts"] >= 4
        if r["flipped"]:
            assert r["text"] and r["edit_words"] >= 0 and len(r["teacher_logits"]) == 2
            # The stored teacher verdict is the target label.
            assert max(range(2), key=lambda i: r["teacher_logits"][i]) == r["label"]
        else:
            assert r["text"] == "" and r["rounds"] == 2
    # Fluency (the smoke recipe's tiny LM): every kept flip is scored, and
    # counterfactuals.md shows it per edit.
    flipped = [r for r in rows if r["flipped"]]
    assert flipped
    for r in flipped:
        assert r["lp_delta"] == pytest.approx(r["lp_edit"] - r["lp_orig"], abs=1e-5)
        assert r["lp_orig"] < 0 and r["lp_edit"] < 0
    md = (out / "counterfactuals.md").read_text()
    for r in flipped:
        assert f"{r['lp_orig']:.2f} → {r['lp_edit']:.2f} ({r['lp_delta']:+.2f})" in md


def test_cod_budget(smoke_run):
    _cfg, out, _ = smoke_run
    res = {
        json.loads(x)["arm"]: json.loads(x)
        for x in (out / "results.jsonl").read_text().splitlines()
    }
    assert res["kd"]["train_rows"] == 8 and res["kd"]["counterfactuals"] == 0
    assert res["kd+cod"]["originals"] == 4
    assert res["kd+cod"]["train_rows"] == 4 + res["kd+cod"]["counterfactuals"]
    assert res["kd+cod"]["counterfactuals"] >= 1  # the CoD arm trained on a verified flip


def test_student_checkpoint_loads_with_plain_transformers(smoke_run):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _cfg, out, _ = smoke_run
    path = out / "students" / "lwd+cod-k8-s0"
    model = AutoModelForSequenceClassification.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.num_hidden_layers == 1
    with torch.no_grad():
        logits = model(
            **tok(["a fine film", "a dull film"], return_tensors="pt", padding=True)
        ).logits
    assert logits.shape == (2, 2)


def test_rerun_resumes_without_work(smoke_run, generator):
    from raydistill.methods.cod import prepare, train
    from raydistill.timing import Stopwatch

    cfg, out, _ = smoke_run
    sent = generator.count
    before = (out / "results.jsonl").read_text()
    sw = Stopwatch()
    prep = prepare(cfg, sw)
    assert prep.teacher_info["source"] == "cache"
    assert prep.gen_stats["cached_seeds"] == 4 and prep.gen_stats["this_run"] is None
    results = train(cfg, prep, sw)
    assert "train" not in sw.t  # nothing left to train
    assert len(results) == 4 and (out / "results.jsonl").read_text() == before
    assert generator.count == sent  # no request went to the generator again
