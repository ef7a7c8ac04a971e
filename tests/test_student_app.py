"""The student app on a real Ray cluster + Serve HTTP proxy (two tiny random BERTs).

Other student kinds (tagging, generation) behind the same app: test_student_kinds_serving.py.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from raydistill.registry import resolve_model
from raydistill.serving.metrics import ShadowSampler, ShadowStats
from raydistill.serving.student_app import (
    StudentClassifier,
    _parse_models,
    app_from_env,
    build_student_app,
)

API_KEY = "test-key-123"
MAX_INPUTS = 4
MAX_CHARS = 50
TEXTS = ["a wonderful, moving film", "dull and far too long", "ok", ""]


def _free_port(lo: int = 8200, hi: int = 8300) -> int:
    for port in range(lo, hi):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 8200-8299")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("students")
    out = {}
    for name, source in (("small", "tiny-bert"), ("wide", "tiny-bert-wide")):
        dest = root / name
        shutil.copytree(resolve_model(source), dest)
        cfg_file = dest / "config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg["id2label"] = {"0": "negative", "1": "positive"}
        cfg["label2id"] = {"negative": 0, "positive": 1}
        cfg_file.write_text(json.dumps(cfg))
        out[name] = str(dest)
    return out


@pytest.fixture(scope="module")
def direct(checkpoints) -> dict[str, StudentClassifier]:
    return {name: StudentClassifier(path) for name, path in checkpoints.items()}


@pytest.fixture(scope="module")
def server(checkpoints, ray_session):
    from ray import serve

    from raydistill.serving.student_app import serve_students

    serve.shutdown()  # a Serve instance left by another module is bound to its own port
    port = _free_port()
    try:
        serve_students(
            checkpoints,
            teacher=checkpoints["small"],
            shadow_fraction=1.0,
            api_key=API_KEY,
            max_inputs=MAX_INPUTS,
            max_chars=MAX_CHARS,
            max_batch_size=8,
            batch_wait_timeout_s=0.02,
            host="127.0.0.1",
            port=port,
            blocking=False,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("the student app did not come up")
            time.sleep(0.5)
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
        ) as client:
            yield client
    finally:
        serve.shutdown()


def _assert_close(served: list[dict], expected: list[dict]) -> None:
    assert len(served) == len(expected)
    for s, e in zip(served, expected, strict=True):
        assert s["label"] == e["label"] and s["label_id"] == e["label_id"]
        assert set(s["probs"]) == set(e["probs"]) == {"negative", "positive"}
        for lab in e["probs"]:
            assert s["probs"][lab] == pytest.approx(e["probs"][lab], abs=1e-4)


# --------------------------------------------------------------------------- no Ray


def test_student_classifier_direct(direct):
    clf = direct["small"]
    out = clf.classify(TEXTS)
    assert len(out) == len(TEXTS)
    for r in out:
        assert r["label"] in ("negative", "positive")
        assert r["label"] == clf.labels[r["label_id"]]
        assert sum(r["probs"].values()) == pytest.approx(1.0, abs=1e-5)
    assert clf.classify([]) == []
    with pytest.raises(TypeError):
        clf.classify("not a list")
    # Batching inside classify() does not change the answers.
    small_batches = StudentClassifier(clf.model_dir, batch_size=1).classify(TEXTS)
    _assert_close(small_batches, out)


def test_shadow_sampler_and_stats():
    for fraction, expected in ((0.0, 0), (0.25, 25), (0.5, 50), (1.0, 100)):
        sampler = ShadowSampler(fraction)
        assert sum(sampler.take() for _ in range(100)) == expected
    with pytest.raises(ValueError):
        ShadowSampler(1.5)
    stats = ShadowStats(teacher="t", fraction=1.0)
    assert stats.snapshot()["agreement"] is None
    stats.record("m", 4, 3)
    stats.record_error("m")
    snap = stats.snapshot()
    assert (snap["requests"], snap["inputs"], snap["agreed"], snap["errors"]) == (1, 4, 3, 1)
    assert snap["agreement"] == 0.75 and snap["by_model"]["m"]["agreement"] == 0.75


def test_builder_validation(checkpoints, monkeypatch):
    with pytest.raises(ValueError):
        build_student_app({})
    with pytest.raises(ValueError, match="teacher"):
        build_student_app(checkpoints, shadow_fraction=0.5)
    with pytest.raises(ValueError):
        build_student_app(checkpoints, teacher=checkpoints["small"], shadow_fraction=2.0)
    with pytest.raises(ValueError):
        build_student_app(checkpoints, min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="max_ongoing_requests"):
        build_student_app(checkpoints, max_batch_size=32, max_ongoing_requests=8)
    assert _parse_models("a=/x, b=/y") == {"a": "/x", "b": "/y"}
    assert _parse_models('{"a": "/x"}') == {"a": "/x"}
    # The Serve-config builder: models from args or the environment, key from the env.
    monkeypatch.setenv("RAYDISTILL_STUDENT_MODELS", f"small={checkpoints['small']}")
    monkeypatch.setenv("RAYDISTILL_API_KEY", "k")
    assert app_from_env({"max_inputs": "8", "max_replicas": 2, "upscale_delay_s": "3"}) is not None
    assert app_from_env({"models": checkpoints}) is not None
    with pytest.raises(ValueError, match="API key"):
        app_from_env({"api_key": "inline-secret"})
    with pytest.raises(ValueError, match="unknown"):
        app_from_env({"max_input": 3})
    monkeypatch.delenv("RAYDISTILL_API_KEY")
    with pytest.raises(ValueError, match="require_api_key"):
        app_from_env({"require_api_key": True})


# --------------------------------------------------------------------------- served


def test_healthz_and_docs_open(server):
    bare = httpx.Client(base_url=str(server.base_url), timeout=30)
    assert bare.get("/healthz").json()["status"] == "ok"
    assert bare.get("/docs").status_code == 200
    spec = bare.get("/openapi.json").json()
    assert "/v1/classify" in spec["paths"]
    # The schema names the served models, so fuzzers reach the handler.
    req = spec["components"]["schemas"]["ClassifyRequest"]["properties"]
    assert req["model"]["enum"] == ["small", "wide"]
    # A text, a [text, text_pair] pair or a {"text", "text_pair"} object: each string
    # carries the limit.
    text, pair, obj = req["inputs"]["items"]["anyOf"]
    assert text["maxLength"] == MAX_CHARS
    assert pair["items"]["maxLength"] == MAX_CHARS and pair["maxItems"] == 2
    assert obj["properties"]["text_pair"]["maxLength"] == MAX_CHARS


def test_models(server):
    body = server.get("/v1/models").json()
    names = [m["name"] for m in body["models"]]
    assert names == ["small", "wide"]
    assert all(m["labels"] == ["negative", "positive"] for m in body["models"])
    # Folders without raydistill_student.json are sequence classifiers.
    assert {(m["kind"], m["endpoint"]) for m in body["models"]} == {
        ("sequence_classification", "/v1/classify")
    }
    assert body["shadow"] == {"enabled": True, "fraction": 1.0}


def test_classify_matches_direct_for_each_model(server, direct):
    for name in ("small", "wide"):
        r = server.post("/v1/classify", json={"model": name, "inputs": TEXTS})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == name
        for res in body["results"]:
            assert sum(res["probs"].values()) == pytest.approx(1.0, abs=1e-5)
        _assert_close(body["results"], direct[name].classify(TEXTS))
    # The two checkpoints really differ, so multiplexing picked the named one.
    a = server.post("/v1/classify", json={"model": "small", "inputs": TEXTS[:1]}).json()
    b = server.post("/v1/classify", json={"model": "wide", "inputs": TEXTS[:1]}).json()
    assert a["results"][0]["probs"] != pytest.approx(b["results"][0]["probs"], abs=1e-6)


def test_concurrent_requests_are_batched_correctly(server, direct):
    jobs = [(["small", "wide"][i % 2], [TEXTS[i % len(TEXTS)], f"text {i}"]) for i in range(16)]

    def call(job):
        name, inputs = job
        r = server.post("/v1/classify", json={"model": name, "inputs": inputs})
        assert r.status_code == 200, r.text
        return name, inputs, r.json()["results"]

    before = server.get("/v1/stats").json()["batches"]
    with ThreadPoolExecutor(8) as pool:
        for name, inputs, results in pool.map(call, jobs):
            _assert_close(results, direct[name].classify(inputs))
    after = server.get("/v1/stats").json()["batches"]
    # Each model's inputs went through its own batched calls (batches are split per model).
    for name in ("small", "wide"):
        items = after[name]["items"] - before.get(name, {}).get("items", 0)
        assert items == 16 and after[name]["max_size"] >= 2


def test_errors_and_app_stays_up(server):
    bare = httpx.Client(base_url=str(server.base_url), timeout=30)
    ok = {"model": "small", "inputs": ["fine"]}
    cases = [
        # 401: no key, wrong key, wrong scheme; /healthz stays open (checked above).
        (bare.post("/v1/classify", json=ok), 401, "API key"),
        (
            bare.post("/v1/classify", json=ok, headers={"Authorization": "Bearer nope"}),
            401,
            "API key",
        ),
        (
            bare.post("/v1/classify", json=ok, headers={"Authorization": f"Basic {API_KEY}"}),
            401,
            "",
        ),
        (bare.get("/v1/models"), 401, ""),
        # 400: malformed JSON.
        (
            server.post(
                "/v1/classify",
                content=b'{"model": "small", "inputs": [',
                headers={"Content-Type": "application/json"},
            ),
            400,
            "malformed JSON",
        ),
        # 404: unknown model, listing the served ones.
        (
            server.post(
                "/v1/classify", content=b"model=small", headers={"Content-Type": "text/plain"}
            ),
            400,
            "Content-Type: application/json",
        ),
        (server.post("/v1/classify", json={"model": "nope", "inputs": ["x"]}), 404, "small, wide"),
        # 413: too many inputs, one input too long, a huge body.
        (
            server.post("/v1/classify", json={"model": "small", "inputs": ["x"] * 5}),
            413,
            f"limit is {MAX_INPUTS} inputs",
        ),
        (
            server.post("/v1/classify", json={"model": "small", "inputs": ["x" * 51]}),
            413,
            f"limit is {MAX_CHARS} characters",
        ),
        (
            server.post(
                "/v1/classify",
                content=json.dumps({"model": "small", "inputs": ["x" * 200_000]}),
                headers={"Content-Type": "application/json"},
            ),
            413,
            "exceeds the limit",
        ),
        # 422: wrong types, missing fields, empty list.
        (server.post("/v1/classify", json={"model": "small", "inputs": "x"}), 422, ""),
        (server.post("/v1/classify", json={"model": "small", "inputs": [1, 2]}), 422, ""),
        (server.post("/v1/classify", json={"model": 3, "inputs": ["x"]}), 422, ""),
        (server.post("/v1/classify", json={"inputs": ["x"]}), 422, ""),
        (server.post("/v1/classify", json={"model": "small", "inputs": []}), 422, ""),
        (server.post("/v1/classify", json=["small"]), 422, ""),
        # A JSON lone surrogate used to reach the tokenizer and come back as a 500.
        (
            server.post(
                "/v1/classify",
                content=b'{"model": "small", "inputs": ["ok", "\\ud800 weird"]}',
                headers={"Content-Type": "application/json"},
            ),
            422,
            "inputs[1] is not valid Unicode",
        ),
    ]
    for r, code, needle in cases:
        assert r.status_code == code, (code, r.status_code, r.text)
        assert needle in r.json()["detail"] if needle else True
    # Still answering after all of that.
    r = server.post("/v1/classify", json=ok)
    assert r.status_code == 200 and len(r.json()["results"]) == 1
    assert bare.get("/healthz").status_code == 200


def _settled_shadow(client: httpx.Client) -> dict:
    """/v1/shadow once no teacher call is in flight (scoring runs in the background)."""
    deadline = time.time() + 60
    while True:
        snap = client.get("/v1/shadow").json()
        if snap["pending"] == 0:
            return snap
        assert time.time() < deadline, snap
        time.sleep(0.2)


def test_shadow_agreement(server):
    before = _settled_shadow(server)
    assert before["teacher"] == "teacher" and before["fraction"] == 1.0
    n_small, n_wide = 3, 2
    for _ in range(n_small):
        assert server.post("/v1/classify", json={"model": "small", "inputs": TEXTS}).is_success
    for _ in range(n_wide):
        assert server.post("/v1/classify", json={"model": "wide", "inputs": TEXTS}).is_success
    snap = _settled_shadow(server)
    assert snap["errors"] == before["errors"] == 0
    # shadow_fraction=1.0: every request was also scored by the teacher.
    assert snap["requests"] == before["requests"] + n_small + n_wide
    assert snap["inputs"] == before["inputs"] + (n_small + n_wide) * len(TEXTS)

    def moved(model: str, key: str) -> int:
        return snap["by_model"][model][key] - before["by_model"].get(model, {}).get(key, 0)

    assert moved("small", "requests") == n_small and moved("wide", "requests") == n_wide
    # The teacher is the "small" checkpoint: it agrees with itself everywhere.
    small = snap["by_model"]["small"]
    assert small["agreement"] == 1.0 and small["agreed"] == small["inputs"]
    assert moved("small", "agreed") == n_small * len(TEXTS)
    wide = snap["by_model"]["wide"]
    assert 0.0 <= wide["agreement"] <= 1.0 and 0 <= moved("wide", "agreed") <= n_wide * len(TEXTS)
    assert snap["agreement"] == pytest.approx(snap["agreed"] / snap["inputs"])


def test_fuzzed_from_its_own_openapi_schema_no_5xx_and_still_serving(server):
    """schemathesis generates requests for every operation the schema lists (valid and
    invalid bodies, with the model names the schema enumerates): nothing answers 5xx,
    every status is one the API documents, and the app keeps serving."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    base = str(server.base_url).rstrip("/")
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    auth = {"Authorization": f"Bearer {API_KEY}"}
    documented = {200, 400, 401, 404, 405, 413, 422, 429, 503}
    seen: dict[str, set[int]] = {}
    ops = [r.ok() for r in schema.get_all_operations()]
    assert {o.path for o in ops} >= {"/v1/classify", "/v1/models"}
    from schemathesis.generation import GenerationMode

    def fuzz(op, mode) -> None:
        name = f"{op.method.upper()} {op.path}"

        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy(mode))
        def check(case):
            r = case.call(base_url=base, headers=auth, timeout=60)
            seen.setdefault(name, set()).add(r.status_code)
            assert r.status_code < 500, (name, r.status_code, r.text[:300])
            assert r.status_code in documented, (name, r.status_code, r.text[:300])

        try:
            check()
        except Unsatisfiable:
            # A GET without parameters has no invalid input to generate.
            assert mode == GenerationMode.NEGATIVE and op.method.upper() == "GET", name

    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(op, mode)
    print("FUZZ statuses:", {k: sorted(v) for k, v in sorted(seen.items())})
    assert any(200 in v for v in seen.values()) and any(422 in v for v in seen.values())
    r = server.post("/v1/classify", json={"model": "small", "inputs": ["still here"]})
    assert r.status_code == 200
