"""Every student kind behind the one Serve app: taggers (/v1/tag), seq2seq and decoder-only
generators (/v1/generate) next to a classifier, with the app's auth, limits, schema and
batching. Real Ray Serve on a free port; tiny random models built from configs with the
MiniLM tokenizer, saved as student folders (raydistill_student.json) in tmp folders.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from raydistill.registry import resolve_minilm, resolve_model
from raydistill.serving.student_kinds import (
    StudentGenerator,
    StudentTagger,
    load_student,
    read_meta,
    repair_bio,
    split_words,
)

API_KEY = "kinds-key"
MAX_INPUTS = 4
MAX_CHARS = 80
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
SENTENCES = ["John Smith lives in New York .", "Paris is far from Berlin, said Anna.", "ok"]


def _free_port(lo: int = 8200, hi: int = 8300) -> int:
    for port in range(lo, hi):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 8200-8299")


def _save(model, tok, dest: Path, meta: dict | None) -> str:
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    if meta is not None:
        (dest / "raydistill_student.json").write_text(json.dumps(meta))
    return str(dest)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForTokenClassification,
        LlamaConfig,
        LlamaForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    root = tmp_path_factory.mktemp("kinds")
    tok = AutoTokenizer.from_pretrained(resolve_minilm())
    torch.manual_seed(0)
    out: dict[str, str] = {}
    bert = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=len(TAGS),
        id2label=dict(enumerate(TAGS)),
        label2id={t: i for i, t in enumerate(TAGS)},
    )
    out["ner"] = _save(
        BertForTokenClassification(bert),
        tok,
        root / "ner",
        {
            "kind": "token_classification",
            "task_kind": "token_classification",
            "label_names": TAGS,
            "max_length": 64,
        },
    )
    t5 = T5Config(
        vocab_size=tok.vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.sep_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    t5_model = T5ForConditionalGeneration(t5)
    out["t5"] = _save(
        t5_model,
        tok,
        root / "t5",
        {
            "kind": "seq2seq",
            "task_kind": "seq2seq",
            "max_length": 64,
            "max_new_tokens": 5,
            "prompt_format": "summarize: {source}",
        },
    )
    out["mcqa"] = _save(
        t5_model,
        tok,
        root / "mcqa",
        {
            "kind": "seq2seq",
            "task_kind": "mcqa",
            "max_length": 64,
            "max_new_tokens": 6,
            "prompt_format": "{task}: {question} choices: {choices}",
            "mode": "explain",
        },
    )
    llama = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
    )
    out["llama"] = _save(
        LlamaForCausalLM(llama),
        tok,
        root / "llama",
        {
            "kind": "causal_lm",
            "task_kind": "seq2seq",
            "max_length": 64,
            "max_new_tokens": 4,
            "prompt_format": "{source}\nTL;DR:",
        },
    )
    # A classifier folder without raydistill_student.json: still a classifier.
    clf = root / "clf"
    shutil.copytree(resolve_model("tiny-bert"), clf)
    cfg = json.loads((clf / "config.json").read_text())
    cfg["id2label"] = {"0": "negative", "1": "positive"}
    cfg["label2id"] = {"negative": 0, "positive": 1}
    (clf / "config.json").write_text(json.dumps(cfg))
    out["clf"] = str(clf)
    return out


@pytest.fixture(scope="module")
def direct(folders) -> dict:
    return {name: load_student(path) for name, path in folders.items()}


# --------------------------------------------------------------------------- no Ray


def test_words_and_bio_repair():
    words = split_words("Dr. O'Neil's state-of-the-art lab, in  N.Y.")
    assert [w for w, _, _ in words] == [
        "Dr",
        ".",
        "O'Neil's",
        "state-of-the-art",
        "lab",
        ",",
        "in",
        "N",
        ".",
        "Y",
        ".",
    ]
    text = "Dr. O'Neil's state-of-the-art lab, in  N.Y."
    assert all(text[s:e] == w for w, s, e in words)
    assert repair_bio(["I-PER", "I-PER", "O", "B-LOC", "I-PER", "X"]) == [
        "B-PER",
        "I-PER",
        "O",
        "B-LOC",
        "B-PER",
        "O",
    ]


def test_kinds_from_folders(folders, direct):
    assert read_meta(folders["clf"]) == {"kind": "sequence_classification"}
    assert {n: m.kind for n, m in direct.items()} == {
        "ner": "token_classification",
        "t5": "seq2seq",
        "mcqa": "seq2seq",
        "llama": "causal_lm",
        "clf": "sequence_classification",
    }
    bad = Path(folders["clf"]).parent / "bad"
    bad.mkdir()
    (bad / "raydistill_student.json").write_text('{"kind": "regression"}')
    with pytest.raises(ValueError, match="regression"):
        read_meta(str(bad))


def test_tagger_spans_match_text(direct):
    tagger: StudentTagger = direct["ner"]
    out = tagger.tag(SENTENCES)
    assert len(out) == len(SENTENCES)
    for text, res in zip(SENTENCES, out, strict=True):
        assert res["words"] == [w for w, _, _ in split_words(text)]
        assert len(res["tags"]) == len(res["words"])
        assert all(t in TAGS for t in res["tags"])
        for ent in res["entities"]:
            assert ent["type"] in ("PER", "LOC")
            assert text[ent["start_char"] : ent["end_char"]] == ent["text"] and ent["text"]
        # One entity per B- tag, and the tags are a valid BIO sequence.
        assert len(res["entities"]) == sum(t.startswith("B-") for t in res["tags"])
        assert repair_bio(res["tags"]) == res["tags"]
    # A batch gives what one text at a time gives.
    assert [tagger.tag([s])[0] for s in SENTENCES] == out


def test_generators_batch_like_single(direct):
    for name in ("t5", "llama"):
        gen: StudentGenerator = direct[name]
        prompts = ["a short one", "a much longer input text that needs padding in a batch"]
        batched = gen.generate(prompts)
        assert [set(r) for r in batched] == [{"text"}] * 2
        assert batched == [gen.generate([p])[0] for p in prompts], name
    llama = direct["llama"]
    assert llama.tokenizer.padding_side == "left"
    assert llama.prompt("x") == "x\nTL;DR:"
    mcqa = direct["mcqa"]
    item = {"question": "Where do fish live?", "choices": ["water", "sky"]}
    assert mcqa.prompt(item) == "predict: Where do fish live? choices: water; sky"
    with pytest.raises(KeyError, match="choices"):
        mcqa.prompt("a question without choices")
    (res,) = mcqa.generate([item])
    assert set(res) == {"text", "answer", "explanation", "choice"}
    assert res["choice"] in (0, 1, None)


# --------------------------------------------------------------------------- served


@pytest.fixture(scope="module")
def server(folders, ray_session):
    from ray import serve

    from raydistill.serving.student_app import serve_students

    serve.shutdown()  # a Serve instance left by another module is bound to its own port
    port = _free_port()
    try:
        serve_students(
            folders,
            api_key=API_KEY,
            max_inputs=MAX_INPUTS,
            max_chars=MAX_CHARS,
            max_batch_size=8,
            batch_wait_timeout_s=0.05,
            host="127.0.0.1",
            port=port,
            blocking=False,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
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
            base_url=base, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120
        ) as client:
            yield client
    finally:
        serve.shutdown()


def test_schema_lists_models_per_endpoint(server):
    spec = httpx.Client(base_url=str(server.base_url), timeout=30).get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert schemas["ClassifyRequest"]["properties"]["model"]["enum"] == ["clf"]
    assert schemas["TagRequest"]["properties"]["model"]["enum"] == ["ner"]
    assert schemas["GenerateRequest"]["properties"]["model"]["enum"] == ["t5", "mcqa", "llama"]
    assert {"/v1/classify", "/v1/tag", "/v1/generate", "/v1/stats"} <= set(spec["paths"])
    models = {m["name"]: m for m in server.get("/v1/models").json()["models"]}
    assert models["ner"]["kind"] == "token_classification" and models["ner"]["labels"] == TAGS
    assert models["ner"]["endpoint"] == "/v1/tag"
    assert models["mcqa"]["fields"] == ["question", "choices"]
    assert models["llama"]["endpoint"] == "/v1/generate" and models["llama"]["labels"] is None
    assert models["clf"]["kind"] == "sequence_classification"


def test_tag_and_generate_match_direct(server, direct):
    r = server.post("/v1/tag", json={"model": "ner", "inputs": SENTENCES})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "ner" and body["results"] == direct["ner"].tag(SENTENCES)
    for name in ("t5", "llama"):
        inputs = ["one input", "another, longer input"]
        r = server.post("/v1/generate", json={"model": name, "inputs": inputs})
        assert r.status_code == 200, r.text
        assert r.json()["results"] == direct[name].generate(inputs), name
    item = {"question": "Where do fish live?", "choices": ["water", "sky"]}
    r = server.post("/v1/generate", json={"model": "mcqa", "inputs": [item]})
    assert r.status_code == 200, r.text
    assert r.json()["results"] == direct["mcqa"].generate([item])
    # The classifier still classifies next to them.
    r = server.post("/v1/classify", json={"model": "clf", "inputs": ["fine", ""]})
    assert r.status_code == 200 and len(r.json()["results"]) == 2


def test_kind_errors_name_the_bad_input(server):
    bare = httpx.Client(base_url=str(server.base_url), timeout=30)
    cases = [
        (bare.post("/v1/tag", json={"model": "ner", "inputs": ["x"]}), 401, "API key"),
        (server.post("/v1/tag", json={"model": "nope", "inputs": ["x"]}), 404, "ner, t5"),
        (server.post("/v1/tag", json={"model": "t5", "inputs": ["x"]}), 404, "/v1/generate"),
        (server.post("/v1/generate", json={"model": "clf", "inputs": ["x"]}), 404, "/v1/classify"),
        (server.post("/v1/classify", json={"model": "ner", "inputs": ["x"]}), 404, "/v1/tag"),
        (server.post("/v1/tag", json={"model": "ner", "inputs": ["ok", "  "]}), 422, "inputs[1]"),
        (server.post("/v1/generate", json={"model": "t5", "inputs": [""]}), 422, "inputs[0]"),
        (
            server.post("/v1/tag", json={"model": "ner", "inputs": ["x"] * (MAX_INPUTS + 1)}),
            413,
            f"limit is {MAX_INPUTS} inputs",
        ),
        (
            server.post("/v1/generate", json={"model": "llama", "inputs": ["y" * (MAX_CHARS + 1)]}),
            413,
            f"limit is {MAX_CHARS} characters",
        ),
        (
            server.post("/v1/generate", json={"model": "mcqa", "inputs": ["no choices"]}),
            422,
            "['question', 'choices']",
        ),
        (
            server.post("/v1/generate", json={"model": "mcqa", "inputs": [{"question": "q"}]}),
            422,
            "['choices']",
        ),
        (server.post("/v1/tag", json={"model": "ner", "inputs": [3]}), 422, ""),
        (server.post("/v1/generate", json={"model": "t5", "inputs": []}), 422, ""),
    ]
    for r, code, needle in cases:
        assert r.status_code == code, (code, r.status_code, r.text)
        if needle:
            assert needle in json.dumps(r.json()["detail"]), r.text
    assert server.post("/v1/tag", json={"model": "ner", "inputs": ["ok"]}).status_code == 200


def test_concurrent_requests_merge_into_batches(server, direct):
    """One-text requests sent together share model calls (batch size > 1), per model."""

    def call(i: int):
        model = ("ner", "t5")[i % 2]
        path = "/v1/tag" if model == "ner" else "/v1/generate"
        text = SENTENCES[i % len(SENTENCES)]
        r = server.post(path, json={"model": model, "inputs": [text]})
        assert r.status_code == 200, r.text
        return model, text, r.json()["results"][0]

    for _attempt in range(3):  # a busy machine can deliver requests one by one
        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(call, range(24)))
        for model, text, res in results:
            want = (
                direct["ner"].tag([text])[0] if model == "ner" else direct["t5"].generate([text])[0]
            )
            assert res == want
        stats = server.get("/v1/stats").json()["batches"]
        if stats["ner"]["max_size"] > 1 and stats["t5"]["max_size"] > 1:
            break
    assert stats["ner"]["max_size"] > 1, stats
    assert stats["t5"]["max_size"] > 1, stats
    assert stats["ner"]["items"] >= 12 and stats["ner"]["batches"] < stats["ner"]["items"]
