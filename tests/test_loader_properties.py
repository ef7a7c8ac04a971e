"""Property tests: any bytes in a custom file → rows or a DataError naming the file."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raydistill.config import DataConfig
from raydistill.pipelines.datasets import DataError, load_split

KINDS = {
    "classification": ("text\tlabel\n", {"label_names": ["a", "b"]}),
    "token_classification": ("tokens\ttags\n", {"label_names": ["PER"]}),
    "seq2seq": ("source\ttarget\n", {}),
    "mcqa": ("question\tchoices\tanswer\n", {}),
}
SUFFIXES = ["tsv", "csv", "jsonl"]
cell = st.one_of(
    st.text(max_size=20), st.sampled_from(["B-PER I-PER", "O", "a|b", "1", "\x00", "x" * 5000])
)
payload = st.one_of(
    st.binary(max_size=300),
    st.lists(st.lists(cell, max_size=4), max_size=5).map(
        lambda rows: "\n".join("\t".join(r) for r in rows).encode()
    ),
    st.text(max_size=200).map(lambda t: t.encode("utf-16")),
)


@pytest.mark.parametrize("kind", list(KINDS))
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=payload, suffix=st.sampled_from(SUFFIXES), keep_header=st.booleans())
def test_rows_or_named_error(tmp_path, kind, body, suffix, keep_header):
    header, extra = KINDS[kind]
    p = tmp_path / f"train.{suffix}"
    p.write_bytes((header.encode() if keep_header else b"") + body)
    cfg = DataConfig(task="custom", kind=kind, train_file=str(p), **extra)
    try:
        rows = load_split(cfg, "train")
    except DataError as e:
        assert str(p) in str(e)
    else:
        assert all(isinstance(r["id"], str) and r["text"] for r in rows)
