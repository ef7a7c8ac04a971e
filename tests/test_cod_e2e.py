"""The whole CoD path on a real local Ray cluster, with tiny models.

Teacher trained with Ray Train → one Ray Data annotation pass → `hf` teacher pool on Ray
Serve → Ray Data generation with teacher verification → students on 2 Ray Train workers
with DeepSpeed ZeRO-2 → HF checkpoints → evaluation → report files. Then a rerun resumes
without retraining anything.
"""

import json

import pytest

from raydistill.config import load_config

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, ray_session, data_dir):
    import socket

    from raydistill.cluster.run import run

    with socket.socket() as sock:  # Serve's HTTP port: 8000 may be taken on a shared machine
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path_factory.mktemp("smoke")
    cache = tmp_path_factory.mktemp("cache")
    cfg = load_config(
        "recipes/smoke-cod.yaml",
        [
            f"out_dir={out}",
            f"cache_dir={cache}",
            "data.teacher_train_rows=1500",
            "generation.rounds=2",
            f"pool.http_port={port}",
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
    methods = {r["method"] for r in data["results"]}
    assert methods == set(cfg.experiment.methods)
    for r in data["results"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["fidelity"] <= 1.0
        assert r["k"] == 8 and r["seed"] == 0
    c = data["counterfactuals"]
    assert 0.0 <= c["flip_rate"] <= 1.0 and c["tokens_per_s"] > 0
    assert c["seeds"] == 4  # k/2 originals of the one seed
    assert c["seeds"] == c["flipped"] + c["no_counterfactual"]


def test_counterfactual_records_are_complete(smoke_run):
    import pyarrow.parquet as pq

    _cfg, out, _ = smoke_run
    rows = pq.read_table(out / "counterfactuals.parquet").to_pylist()
    assert len(rows) == 4
    for r in rows:
        assert {"id", "parent_id", "source", "flipped", "attempts", "edit_words"} <= set(r)
        assert r["source"] == "llm:tiny-llama" and r["id"] == f"{r['parent_id']}/cf"
        assert r["attempts"] >= 4
        if r["flipped"]:
            assert r["text"] and r["edit_words"] >= 0 and len(r["teacher_logits"]) == 2
            # The stored teacher verdict is the target label.
            assert max(range(2), key=lambda i: r["teacher_logits"][i]) == r["label"]
        else:
            assert r["text"] == "" and r["rounds"] == 2


def test_cod_budget(smoke_run):
    _cfg, out, _ = smoke_run
    res = {
        json.loads(x)["method"]: json.loads(x)
        for x in (out / "results.jsonl").read_text().splitlines()
    }
    assert res["kd"]["train_rows"] == 8 and res["kd"]["counterfactuals"] == 0
    assert res["kd+cod"]["originals"] == 4
    assert res["kd+cod"]["train_rows"] == 4 + res["kd+cod"]["counterfactuals"]


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


def test_rerun_resumes_without_work(smoke_run):
    from raydistill.cluster.run import Stopwatch, prepare, train

    cfg, out, _ = smoke_run
    before = (out / "results.jsonl").read_text()
    sw = Stopwatch()
    prep = prepare(cfg, sw)
    assert prep.teacher_info["source"] == "cache"
    assert prep.gen_stats["cached_seeds"] == 4 and prep.gen_stats["this_run"] is None
    results = train(cfg, prep, sw)
    assert "train" not in sw.t  # nothing left to train
    assert len(results) == 4 and (out / "results.jsonl").read_text() == before
