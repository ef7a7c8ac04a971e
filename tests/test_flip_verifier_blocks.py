"""FlipVerifier's output columns keep one Arrow type whatever a batch holds.

Found at SST-2 k = 512 (1,228 seeds): a batch in which every seed flipped came out with
`cf_logits` as a 2-D array (numpy stacks equal-length lists), which Ray Data stores as a
tensor column, and the stage died concatenating it with a mixed batch's list column
("Trying to unify unsupported tensor type: list<item: double>"). Small runs never had an
all-flipped batch. Runs the real verifier through real Ray Data with a tiny teacher.
"""

from __future__ import annotations

import json

import numpy as np

from raydistill.pipelines.counterfactual_records import floats
from raydistill.pipelines.counterfactuals import FlipVerifier
from raydistill.registry import resolve_model

TEXTS = ["a fine film", "a good story", "a great cast", "a warm score"]
EDITS = {
    "a fine film": ["a dull film"],
    "a good story": ["a bad story"],
    "a great cast": ["a poor cast"],
    "a warm score": ["a cold score"],
}


def _rows(targets: list[int]) -> list[dict]:
    return [
        {"id": f"s{i}", "text": t, "target": y, "llm_error": "", "candidates": EDITS[t]}
        for i, (t, y) in enumerate(zip(TEXTS, targets, strict=True))
    ]


def test_all_flipped_and_mixed_batches_concatenate_in_ray_data(ray_session):
    import ray

    teacher = resolve_model("tiny-bert")
    # The random tiny teacher's own predictions on the edits: targets it agrees with flip.
    verifier = FlipVerifier(teacher)
    pred = verifier.clf.logits([EDITS[t][0] for t in TEXTS]).argmax(axis=1)
    targets = [int(p) for p in pred]
    all_flip = _rows(targets)[:2]
    mixed = _rows(targets[:2] + [1 - targets[2], targets[3]])[2:]
    direct = verifier({k: np.array([r[k] for r in all_flip], dtype=object) for k in all_flip[0]})
    assert all(direct["flipped"]) and direct["cf_logits"].ndim == 1

    # One block, two batches: the map task concatenates its batches' outputs into a block.
    ds = ray.data.from_items(all_flip + mixed, override_num_blocks=1).map_batches(
        FlipVerifier,
        fn_constructor_kwargs={"teacher_dir": teacher},
        batch_size=2,
        concurrency=1,
    )
    out = sorted(ds.take_all(), key=lambda r: r["id"])
    assert [bool(r["flipped"]) for r in out] == [True, True, False, True]
    for r, t in zip(out, TEXTS, strict=True):
        logits = floats(r["cf_logits"])
        if r["flipped"]:
            want = verifier.clf.logits([EDITS[t][0]])[0]
            assert np.allclose(logits, want, atol=1e-5)
            assert np.asarray(floats(r["cf_hidden"])).size > 0
        else:
            assert logits == [] and json.loads(r["cf_hidden"]) == []
