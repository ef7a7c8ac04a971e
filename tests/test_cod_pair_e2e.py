"""CoD on a sentence-pair task from local files, end to end on a real local Ray cluster.

Synthetic NLI-shaped files (`pair_data.py`, written here) → a tiny teacher reading
premise + hypothesis → one annotation pass → word swaps in the hypothesis only, answered
by a scripted OpenAI-compatible generator with words of the target class → teacher
verification of the whole pair → students trained on pairs. The premise of every verified
counterfactual must be the seed's premise, verbatim.

Slow (a teacher, a generation and 2 students on Ray Train): run with `-m slow`.
"""

import json
import re

import pytest

from raydistill.config import load_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _answers(payload):
    from pair_data import MARKERS
    from scripted_llm import completion, last_user_message

    n = int((payload or {}).get("n") or 1)
    m = re.search(r"typical of (\w+)\.$", last_user_message(payload))
    words = MARKERS.get(m.group(1), ["unknown"]) if m else ["unparsable reply here please"]
    return 200, completion([words[i % len(words)] for i in range(n)])


def test_pair_cod_end_to_end(tmp_path, ray_session):
    import pyarrow.parquet as pq
    from pair_data import write_pair_files
    from scripted_llm import ScriptedLLM

    from raydistill.methods.cod import run
    from raydistill.pipelines.datasets import load_split

    files = write_pair_files(tmp_path / "data")
    with ScriptedLLM(_answers) as llm:
        cfg = load_config(
            "recipes/smoke-pair-cod.yaml",
            [
                f"out_dir={tmp_path / 'run'}",
                f"cache_dir={tmp_path / 'cache'}",
                *[f"data.{role}_file={path}" for role, path in files.items()],
                "pool.backend=openai",
                f"pool.url={llm.base_url}",
                "pool.model=scripted-pairs",
            ],
        )
        report = run(cfg)
        prompts = [p["messages"] for p in llm.received() if p]
    out = tmp_path / "run"
    # The prompts asked for the hypothesis, toward a class, with demonstrations from data.
    assert prompts and all("hypothesis" in m[0]["content"] for m in prompts)
    assert not any("opposite" in json.dumps(m).lower() for m in prompts)
    assert any(len(m) > 2 for m in prompts)  # few-shot pairs from class_words
    assert json.loads((out / "class_words.json").read_text())["contradiction"]

    train = {r["id"]: r for r in load_split(cfg.data, "train")}
    records = pq.read_table(out / "counterfactuals.parquet").to_pylist()
    assert len(records) == 3  # k/2 = 3 seeds, one per class, runner-up targets
    flipped = [r for r in records if r["flipped"]]
    assert flipped, records
    for r in flipped:
        seed = train[r["parent_id"]]
        assert r["edit_side"] == "text_pair"
        assert r["text"] == seed["text"]  # the premise, kept verbatim
        assert r["text_pair"] != seed["text_pair"] and r["text_pair"]
        assert max(range(3), key=lambda i: r["teacher_logits"][i]) == r["label"]
    results = {
        json.loads(x)["arm"]: json.loads(x)
        for x in (out / "results.jsonl").read_text().splitlines()
    }
    assert results["kd+cod"]["counterfactuals"] >= 1
    assert set(results) == {"kd", "kd+cod"}
    assert report["counterfactuals"]["flipped"] == len(flipped)
