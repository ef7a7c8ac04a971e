"""Task kinds: real built-in data per kind, custom files per kind, validation, k-shot."""

from collections import Counter

import pytest

from raydistill.config import DataConfig
from raydistill.pipelines.bio import bio_problem, spans_to_tags, tags_to_spans
from raydistill.pipelines.datasets import (
    DataError,
    hub_records_to_rows,
    load_split,
    load_split_stats,
)
from raydistill.pipelines.kshot import sample_kshot, sample_kshot_rows
from raydistill.pipelines.tasks import get_task, spec_for


def test_conll2003_train(data_dir):
    rows = load_split(DataConfig(task="conll2003", data_dir=str(data_dir)), "train")
    assert len(rows) == 14041
    tags = Counter(t for r in rows for t in r["tags"])
    assert tags["B-PER"] == 6600 and tags["O"] == 169578 and len(tags) == 9
    spans = [s for r in rows for s in tags_to_spans(r["tags"])]
    assert Counter(t for t, _, _ in spans)["PER"] == 6600
    r = rows[0]
    assert tags_to_spans(r["tags"]) == [("ORG", 0, 1), ("MISC", 2, 3), ("MISC", 6, 7)]
    assert all(spans_to_tags(tags_to_spans(r["tags"]), len(r["tags"])) == r["tags"] for r in rows)


def test_cqa_cose_joins_explanations(data_dir):
    cfg = DataConfig(task="cqa_cose", data_dir=str(data_dir))
    (train, st), (dev, _), (test, sd) = (load_split_stats(cfg, r) for r in ("train", "dev", "test"))
    assert len(train) + len(dev) == 7610 and len(test) == 950
    assert st.get("explanations_missing", 0) == 0 and sd.get("explanations_missing", 0) == 0
    assert all(r["explanation"] and len(r["choices"]) == 3 for r in train + test)
    assert {r["answer"] for r in test} == {0, 1, 2}


def test_bbc_news_and_headlines():
    news = {r: load_split(DataConfig(task="bbc_news"), r) for r in ("train", "dev", "test")}
    assert sum(map(len, news.values())) == 2225
    assert {r["label"] for rows in news.values() for r in rows} == set(range(5))
    heads = load_split(DataConfig(task="bbc_headlines"), "test")
    assert all(
        r["target"] == n["text"].split("\n", 1)[0].strip()
        for r, n in zip(heads, news["test"], strict=True)
    )


def test_aclsum_rows():
    rows = load_split(DataConfig(task="aclsum"), "test")
    assert len(rows) == 100 and all(r["source"] and r["target"] for r in rows)


def test_nli_specs_and_label_filter():
    for name, hub in (("snli", "stanfordnlp/snli"), ("mnli", "nyu-mll/glue")):
        spec = get_task(name)
        assert spec.hub_id == hub and spec.num_labels == 3 and spec.hub_text_pair_field
    recs = [
        {"premise": "A man sleeps.", "hypothesis": "A man rests.", "label": 0},
        {"premise": "A dog.", "hypothesis": "A cat.", "label": -1},
        {"premise": "Kids play.", "hypothesis": "Kids cry.", "label": 2},
    ]
    stats = {}
    rows = hub_records_to_rows(recs, get_task("snli"), "snli:train", "train", stats)
    assert stats["dropped_labels"] == 1
    assert [(r["text"], r["text_pair"], r["label"]) for r in rows] == [
        ("A man sleeps.", "A man rests.", 0),
        ("Kids play.", "Kids cry.", 2),
    ]


def _cfg(tmp_path, name, text, kind, **kw):
    p = tmp_path / name
    p.write_text(text)
    return DataConfig(task="custom", kind=kind, train_file=str(p), **kw)


def test_custom_every_kind(tmp_path):
    tok = _cfg(
        tmp_path,
        "t.tsv",
        "tokens\ttags\nAnn lives here\tB-PER O O\n",
        "token_classification",
        label_names=["PER"],
    )
    assert load_split(tok, "train")[0]["tags"] == ["B-PER", "O", "O"]
    j = '{"tokens": ["Ann", "Lee"], "tags": ["B-PER", "I-PER"]}\n'
    assert load_split(
        _cfg(tmp_path, "t.jsonl", j, "token_classification", label_names=["PER"]), "train"
    )
    s2s = _cfg(tmp_path, "s.csv", "source,target\nlong text,short\n", "seq2seq")
    assert load_split(s2s, "train")[0] == {
        "id": "train-0",
        "text": "long text",
        "source": "long text",
        "target": "short",
    }
    mc = _cfg(tmp_path, "m.tsv", "question\tchoices\tanswer\nWhy?\ta|b|c\tb\n", "mcqa")
    assert (
        load_split(mc, "train")[0]["answer"] == 1
        and load_split(mc, "train")[0]["explanation"] is None
    )
    mj = '{"question": "Q", "choices": ["x", "y"], "answer": 0, "explanation": "e"}\n'
    assert load_split(_cfg(tmp_path, "m.jsonl", mj, "mcqa"), "train")[0]["explanation"] == "e"
    pair = _cfg(
        tmp_path,
        "p.tsv",
        "a\tb\tlabel\nx\ty\t1\n",
        "classification",
        text_column="a",
        text_pair_column="b",
        label_names=["n", "y"],
    )
    assert load_split(pair, "train")[0]["text_pair"] == "y"


BAD = [
    ("token_classification", "t.tsv", "tokens\ttag\nA\tO\n", r"t\.tsv: missing column 'tags'"),
    (
        "token_classification",
        "t.tsv",
        "tokens\ttags\nA B\tO\n",
        r"t\.tsv: row 1: 2 tokens but 1 tags",
    ),
    ("token_classification", "t.tsv", "tokens\ttags\nA\tB-XYZ\n", r"row 1: unknown tag 'B-XYZ'"),
    ("token_classification", "t.tsv", "tokens\ttags\nA B\tB-LOC I-PER\n", r"row 1: malformed BIO"),
    ("token_classification", "t.jsonl", '{"tokens": [], "tags": []}\n', r"row 1: empty tokens"),
    ("seq2seq", "s.csv", "source,target\nx,\n", r"s\.csv: row 1: empty target"),
    ("seq2seq", "s.csv", "source,tgt\nx,y\n", r"missing column 'target'"),
    ("mcqa", "m.tsv", "question\tchoices\tanswer\nQ\tonly\t0\n", r"row 1: .*at least 2"),
    ("mcqa", "m.tsv", "question\tchoices\tanswer\nQ\ta|b\t5\n", r"row 1: answer 5 .*out of range"),
    ("mcqa", "m.tsv", "question\tchoices\tanswer\nQ\ta|b\tzz\n", r"row 1: answer 'zz' .*not among"),
    ("mcqa", "m.tsv", "question\tchoices\tanswer\n \ta|b\t0\n", r"row 1: empty question"),
]


@pytest.mark.parametrize(("kind", "name", "text", "match"), BAD)
def test_custom_bad_input_names_file_row_field(tmp_path, kind, name, text, match):
    cfg = _cfg(tmp_path, name, text, kind, label_names=["PER", "LOC"])
    with pytest.raises(DataError, match=match):
        load_split(cfg, "train")


def test_nul_bytes_and_ragged_rows(tmp_path):
    cfg = _cfg(tmp_path, "s.tsv", "source\ttarget\na\x00b\tc\n", "seq2seq")
    with pytest.raises(DataError, match=r"s\.tsv: contains NUL"):
        load_split(cfg, "train")
    cfg = _cfg(tmp_path, "s.tsv", "source\ttarget\na\n", "seq2seq")
    with pytest.raises(DataError, match=r"s\.tsv: row 1 has a different number"):
        load_split(cfg, "train")


def test_bio_helpers():
    assert bio_problem(["B-PER", "I-PER", "O", "B-LOC"]) is None
    assert "I-PER" in bio_problem(["B-LOC", "I-PER"])
    assert "sentence start" in bio_problem(["I-PER"])
    assert tags_to_spans(["B-PER", "B-PER", "I-PER"]) == [("PER", 0, 1), ("PER", 1, 3)]


def test_kshot_dispatch_per_kind(data_dir):
    pool = [{"id": f"r{i}", "text": f"t{i}", "label": i % 2} for i in range(40)]
    spec = get_task("sst2")
    assert sample_kshot_rows(pool, 8, spec, 0) == sample_kshot(pool, 8, 2, 0)
    conll = load_split(DataConfig(task="conll2003", data_dir=str(data_dir)), "dev")
    cspec = get_task("conll2003")
    for seed in range(3):
        got = sample_kshot_rows(conll, 4, cspec, seed)
        assert got == sample_kshot_rows(conll, 4, cspec, seed) and len({r["id"] for r in got}) == 4
        assert {t for r in got for t, _, _ in tags_to_spans(r["tags"])} == {
            "PER",
            "ORG",
            "LOC",
            "MISC",
        }
    mc = [
        {"id": f"q{i}", "text": "q", "question": "q", "choices": ["a", "b", "c"], "answer": i % 3}
        for i in range(30)
    ]
    got = sample_kshot_rows(mc, 6, spec_for(DataConfig(task="custom", kind="mcqa")), 1)
    assert Counter(r["answer"] for r in got) == {0: 2, 1: 2, 2: 2}
    s2s = [{"id": f"s{i}", "text": "x", "source": "x", "target": "y"} for i in range(30)]
    a = sample_kshot_rows(s2s, 5, get_task("aclsum"), 0)
    assert (
        a
        == sample_kshot_rows(s2s, 5, get_task("aclsum"), 0)
        != sample_kshot_rows(s2s, 5, get_task("aclsum"), 1)
    )
