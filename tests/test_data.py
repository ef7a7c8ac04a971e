"""Data loading, validation errors that name file and row, k-shot sampling."""

from collections import Counter

import pytest

from raydistill.config import DataConfig
from raydistill.pipelines.datasets import DataError, load_human_counterfactuals, load_split
from raydistill.pipelines.kshot import KShotError, sample_kshot
from raydistill.pipelines.tasks import UnknownTaskError, get_task
from raydistill.registry import UnknownModelError, resolve_model


def test_sst2_local_splits(data_dir):
    cfg = DataConfig(task="sst2", data_dir=str(data_dir))
    test = load_split(cfg, "test")
    assert len(test) == 872
    assert {r["label"] for r in test} == {0, 1}
    assert all(r["text"] and r["id"].startswith("test-") for r in test)


def test_imdb_cad_with_human_counterfactuals(data_dir):
    cfg = DataConfig(task="imdb", data_dir=str(data_dir))
    train = load_split(cfg, "train")
    human = load_human_counterfactuals(cfg, "train")
    assert len(train) == len(human) == 1707
    flipped = sum(human[r["id"]]["label"] != r["label"] for r in train)
    assert flipped / len(train) > 0.95


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def _custom(tmp_path, train_text, name="train.tsv", labels=("neg", "pos")):
    p = _write(tmp_path, name, train_text)
    return DataConfig(task="custom", train_file=str(p), label_names=list(labels))


def test_custom_tsv_with_label_names(tmp_path):
    cfg = _custom(tmp_path, "text\tlabel\ngood film\tpos\nbad film\tneg\nok\t1\n")
    rows = load_split(cfg, "train")
    assert [r["label"] for r in rows] == [1, 0, 1]


def test_custom_jsonl_multiclass(tmp_path):
    cfg = _custom(
        tmp_path,
        '{"text": "a", "label": "x"}\n{"text": "b", "label": 2}\n',
        name="t.jsonl",
        labels=("x", "y", "z"),
    )
    assert [r["label"] for r in load_split(cfg, "train")] == [0, 2]


def test_missing_label_column_names_file(tmp_path):
    cfg = _custom(tmp_path, "text\tsentiment\ngood\tpos\n")
    with pytest.raises(DataError, match=r"train\.tsv: missing column 'label'"):
        load_split(cfg, "train")


def test_unknown_label_names_file_and_row(tmp_path):
    cfg = _custom(tmp_path, "text\tlabel\ngood\tpos\nbad\tmeh\n")
    with pytest.raises(DataError, match=r"train\.tsv: row 2: unknown label 'meh'"):
        load_split(cfg, "train")


def test_out_of_range_label(tmp_path):
    cfg = _custom(tmp_path, "text\tlabel\ngood\t5\n")
    with pytest.raises(DataError, match="row 1: unknown label"):
        load_split(cfg, "train")


def test_empty_text_names_row(tmp_path):
    cfg = _custom(tmp_path, "text,label\ngood,pos\n  ,neg\n", name="train.csv")
    with pytest.raises(DataError, match=r"train\.csv: row 2: empty text"):
        load_split(cfg, "train")


def test_unreadable_file(tmp_path):
    p = tmp_path / "train.tsv"
    p.write_bytes(b"text\tlabel\n\xff\xfe\x00bad\t1\n")
    cfg = DataConfig(task="custom", train_file=str(p), label_names=["a", "b"])
    with pytest.raises(DataError, match=r"train\.tsv: not UTF-8"):
        load_split(cfg, "train")
    with pytest.raises(DataError, match="does not exist"):
        load_split(
            DataConfig(task="custom", train_file=str(tmp_path / "x.tsv"), label_names=["a", "b"]),
            "train",
        )


def test_bad_jsonl_line(tmp_path):
    cfg = _custom(tmp_path, '{"text": "a", "label": 0}\n{oops\n', name="t.jsonl")
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_split(cfg, "train")


def test_unknown_task_and_model_list_known():
    with pytest.raises(UnknownTaskError, match="known: .*sst2"):
        get_task("sst3")
    with pytest.raises(UnknownModelError, match="Known names: .*smollm2-135m-instruct"):
        resolve_model("no-such-model")


def test_hub_fallback_error_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="nyu-mll/glue/cola.*offline, point data.data_dir"):
        load_split(DataConfig(task="cola", data_dir=str(tmp_path)), "test")


def _pool(n_per_class=(30, 30, 30)):
    rows = []
    for c, n in enumerate(n_per_class):
        rows += [{"id": f"{c}-{i}", "text": f"t{c}{i}", "label": c} for i in range(n)]
    return rows


@pytest.mark.parametrize(("k", "labels"), [(8, 2), (16, 2), (9, 3), (4, 3)])
def test_kshot_balanced(k, labels):
    pool = _pool((30,) * labels)
    got = sample_kshot(pool, k, labels, seed=3)
    counts = Counter(r["label"] for r in got)
    assert len(got) == k and len({r["id"] for r in got}) == k
    assert max(counts.values()) - min(counts.get(c, 0) for c in range(labels)) <= 1


def test_kshot_deterministic_and_seed_dependent():
    pool = _pool((50, 50))
    a = [r["id"] for r in sample_kshot(pool, 8, 2, seed=1)]
    assert a == [r["id"] for r in sample_kshot(pool, 8, 2, seed=1)]
    assert a != [r["id"] for r in sample_kshot(pool, 8, 2, seed=2)]


def test_kshot_nested_half_budget():
    pool = _pool((50, 50))
    for seed in range(5):
        full = {r["id"] for r in sample_kshot(pool, 16, 2, seed)}
        half = {r["id"] for r in sample_kshot(pool, 8, 2, seed)}
        assert half <= full


def test_kshot_too_few():
    with pytest.raises(KShotError, match="class 1"):
        sample_kshot(_pool((10, 2)), 8, 2, seed=0)
