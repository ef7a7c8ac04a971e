"""Students without a cluster: truncation, LWD wiring, HF-format checkpoints."""

import pytest
import torch

from raydistill.registry import resolve_model
from raydistill.training.loop import TrainJob, deepspeed_config
from raydistill.training.students import DistillStudent, default_layer_map


def test_default_layer_map_spreads_evenly():
    assert default_layer_map(2, 6) == [3, 6]
    assert default_layer_map(3, 6) == [2, 4, 6]
    assert default_layer_map(1, 2) == [2]


def _batch(tok, texts=("a fine film", "a dull and boring film")):
    enc = tok(list(texts), return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def test_student_truncates_and_projects(tmp_path):
    from transformers import AutoTokenizer

    small = resolve_model("tiny-bert")  # 64 wide student
    s = DistillStudent(small, ["neg", "pos"], num_layers=1, teacher_width=96, teacher_layers=2)
    assert s.model.config.num_hidden_layers == 1 and s.layer_map == [2]
    tok = AutoTokenizer.from_pretrained(small)
    logits, proj = s(*_batch(tok), with_hidden=True)
    assert logits.shape == (2, 2) and proj.shape == (2, 1, 96)
    s.save(tmp_path / "ckpt", tok)
    assert (tmp_path / "ckpt" / "lwd_projection.safetensors").exists()

    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ckpt")
    assert plain.config.id2label == {0: "neg", 1: "pos"}
    with torch.no_grad():
        s.model.eval()
        a = s.model(*_batch(tok)).logits
        b = plain(*_batch(tok)).logits
    assert torch.allclose(a, b, atol=1e-6)


def test_same_width_needs_no_projection_weights(tmp_path):
    small = resolve_model("tiny-bert")
    s = DistillStudent(small, ["a", "b", "c"], num_layers=2, teacher_width=64, teacher_layers=2)
    assert s.projection is not None and s.projection.identity
    assert s.model.config.num_labels == 3


def test_bad_layer_map_and_too_many_layers():
    small = resolve_model("tiny-bert")
    with pytest.raises(ValueError, match="lwd_layer_map has 3 entries"):
        DistillStudent(small, ["a", "b"], num_layers=2, layer_map=[1, 2, 2], teacher_width=64)
    with pytest.raises(ValueError, match="num_layers=5"):
        DistillStudent(small, ["a", "b"], num_layers=5)


def test_decoder_only_student():
    llama = resolve_model("tiny-llama")
    s = DistillStudent(llama, ["neg", "pos"], num_layers=1, teacher_width=64, teacher_layers=2)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama)
    tok.pad_token = tok.pad_token or tok.eos_token
    logits, proj = s(*_batch(tok), with_hidden=True)
    assert logits.shape == (2, 2) and proj.shape == (2, 1, 64)


def test_deepspeed_config_shape():
    job = TrainJob(
        name="j",
        backbone="x",
        label_names=["a", "b"],
        train_rows=[],
        dev_rows=[],
        test_rows=[],
        zero_stage=2,
    )
    cfg = deepspeed_config(job, micro_batch=4, world=2)
    assert cfg["train_batch_size"] == 8 and cfg["zero_optimization"]["stage"] == 2
    assert not cfg["fp16"]["enabled"] and not cfg["bf16"]["enabled"]
    # bf16 only where it is asked for on a GPU (devices.bf16_supported decides which).
    assert not deepspeed_config(job, 4, 2, on_gpu=False, bf16=True)["bf16"]["enabled"]
    gpu = deepspeed_config(job, 4, 2, on_gpu=True, bf16=True)
    assert gpu["bf16"]["enabled"] and "overlap_comm" not in gpu["zero_optimization"]


def test_freeze_embeddings_leaves_layers_trainable():
    small = resolve_model("tiny-bert")
    s = DistillStudent(small, ["a", "b"], num_layers=1, freeze_embeddings=True)
    emb = s.model.base_model.embeddings
    assert not any(p.requires_grad for p in emb.parameters())
    assert all(p.requires_grad for p in s.model.base_model.encoder.parameters())
    assert s.model.classifier.weight.requires_grad


def test_mean_pooled_student_loads_with_plain_transformers_in_a_fresh_process(tmp_path):
    """The checkpoint carries its model code: no raydistill import needed to load it."""
    import json
    import subprocess
    import sys

    from transformers import AutoTokenizer

    small = resolve_model("tiny-bert")
    s = DistillStudent(small, ["neg", "pos"], num_layers=1)
    assert type(s.model).__name__ == "PooledForSequenceClassification"
    tok = AutoTokenizer.from_pretrained(small)
    s.save(tmp_path / "ckpt", tok)
    s.model.eval()
    with torch.no_grad():
        ours = s.model(*_batch(tok)).logits.tolist()
    code = (
        "import json, sys\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        "p = sys.argv[1]\n"
        "m = AutoModelForSequenceClassification.from_pretrained(p, trust_remote_code=True).eval()\n"
        "t = AutoTokenizer.from_pretrained(p, trust_remote_code=True)\n"
        "x = t(['a fine film', 'a dull and boring film'], return_tensors='pt', padding=True)\n"
        "print(json.dumps({'mods': sorted(k for k in sys.modules if k.startswith('raydistill')),"
        " 'logits': m(**x).logits.tolist(), 'labels': m.config.id2label}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["mods"] == []
    assert got["labels"] == {"0": "neg", "1": "pos"}
    torch.testing.assert_close(
        torch.tensor(got["logits"]), torch.tensor(ours), atol=1e-5, rtol=1e-4
    )


def test_native_pooling_keeps_the_backbone_head():
    small = resolve_model("tiny-bert")
    s = DistillStudent(small, ["a", "b"], num_layers=1, pooling="native")
    assert type(s.model).__name__ == "BertForSequenceClassification"
    with pytest.raises(ValueError, match="pooling must be one of"):
        DistillStudent(small, ["a", "b"], pooling="max")


def test_param_groups_put_new_parts_at_head_lr():
    from raydistill.training.loop import param_groups

    small = resolve_model("tiny-bert")
    s = DistillStudent(
        small, ["a", "b"], num_layers=1, teacher_width=96, teacher_layers=2, freeze_embeddings=True
    )
    groups = param_groups(s, 1e-4, 1e-2)
    assert [g["lr"] for g in groups] == [1e-4, 1e-2]
    body, head = ({id(p) for p in g["params"]} for g in groups)
    assert id(s.model.classifier.weight) in head and id(s.model.classifier.weight) not in body
    assert all(id(p) in head for p in s.projection.parameters())
    layer = next(s.model.base_model.encoder.parameters())
    assert id(layer) in body
    # frozen parts are in no group; the [CLS] pooler the mean head never reads is frozen
    frozen = {id(p) for p in s.parameters() if not p.requires_grad}
    assert frozen and not frozen & (body | head)
    assert all(not p.requires_grad for p in s.model.base_model.pooler.parameters())
    [one] = param_groups(s, 1e-4, None)
    assert one["lr"] == 1e-4 and len(one["params"]) == len(body | head)


def test_batcher_cuts_padding_without_changing_outputs():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from raydistill.training.batching import Batcher

    path = resolve_model("tiny-bert")
    tok = AutoTokenizer.from_pretrained(path)
    rows = [
        {"text": "good", "label": 1},
        {"text": "bad", "label": 0},
        {"text": "a long and winding sentence that pads every other row a lot", "label": 1},
    ]
    data = Batcher(tok, rows, max_length=32)
    short = torch.tensor([0, 1])
    ids, mask = data.batch(short)
    assert ids.shape[1] < data.ids.shape[1] and bool(mask.all())  # only used columns left
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        cut = model(input_ids=ids, attention_mask=mask).logits
        full = model(input_ids=data.ids[short], attention_mask=data.mask[short]).logits
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=1e-4)
    assert data.batch(torch.tensor([2]))[0].shape[1] == data.ids.shape[1]


def test_epoch_order_groups_lengths_and_keeps_every_row_once():
    import numpy as np

    from raydistill.training.batching import epoch_order

    # 23 rows, batches of 4, windows of 2 batches (8 rows): windows of 8, 8, 7 rows.
    lengths = np.array(
        [3, 40, 7, 22, 9, 15, 31, 2, 18, 27, 5, 11, 36, 13, 8, 25, 4, 30, 6, 19, 1, 33, 12]
    )
    order = epoch_order(np.random.default_rng(0), lengths, micro=4, group=True, window=2).numpy()
    assert sorted(order.tolist()) == list(range(23))  # every row exactly once
    batches = [order[i : i + 4] for i in range(0, 20, 4)]  # the 5 batches the loop takes
    assert all(len(b) == 4 for b in batches) and len(order[20:]) == 3  # remainder last
    # Each batch holds neighbours in its window's length order: per window, the two batches
    # split at the window's median, so no batch mixes the window's shortest and longest.
    perm = np.random.default_rng(0).permutation(23)
    for w in range(0, 23, 8):
        window = sorted(lengths[perm[w : w + 8]].tolist(), reverse=True)
        for i in range(0, len(window), 4):
            assert sorted(window[i : i + 4]) in [sorted(lengths[b].tolist()) for b in batches] + [
                sorted(lengths[order[20:]].tolist())
            ]
    # Grouped batches pad less than random ones (sum over batches of 4 x the longest row).
    pad = lambda o: sum(4 * lengths[o[i : i + 4]].max() for i in range(0, 20, 4))  # noqa: E731
    assert pad(order) < pad(np.random.default_rng(0).permutation(23))
    # Off (and for batches as big as the data): exactly the plain permutation, as before.
    plain = epoch_order(np.random.default_rng(0), lengths, micro=4, group=False).numpy()
    assert plain.tolist() == np.random.default_rng(0).permutation(23).tolist()
    same = epoch_order(np.random.default_rng(0), lengths, micro=23, group=True).numpy()
    assert same.tolist() == plain.tolist()


def test_batcher_rejects_rows_with_and_without_hidden_states_naming_them():
    """A mixed batch once crashed with a bare KeyError (human edits carry hidden states)."""
    from transformers import AutoTokenizer

    from raydistill.training.batching import Batcher

    tok = AutoTokenizer.from_pretrained(resolve_model("tiny-bert"))
    rows = [
        {"id": "a/cf", "text": "good", "label": 1, "teacher_hidden": [[0.0, 1.0]]},
        {"id": "b", "text": "bad", "label": 0},
    ]
    with pytest.raises(ValueError, match=r"1 of 2 training rows lack teacher_hidden.*'b'"):
        Batcher(tok, rows, max_length=16)
    both = [dict(rows[0]), dict(rows[1], teacher_hidden=[[1.0, 0.0]])]
    assert Batcher(tok, both, max_length=16).t_hidden.shape == (2, 1, 2)


def test_evaluator_restores_input_order_and_counts_pairs():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from raydistill.training.evaluation import Evaluator

    path = resolve_model("tiny-bert")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    texts = ["a very long review that goes on and on about the film", "ok", "fine acting", "meh"]
    with torch.no_grad():
        one_by_one = [int(model(**tok([t], return_tensors="pt")).logits.argmax(-1)) for t in texts]
    rows = [
        {"text": t, "label": p, "teacher_pred": 1 - p}
        for t, p in zip(texts, one_by_one, strict=True)
    ]
    pairs = [(one_by_one[0], texts[0], one_by_one[1], texts[1])]
    m = Evaluator(tok, rows, pairs, max_length=32, bs=2)(model)
    assert m == {"accuracy": 1.0, "fidelity": 0.0, "boundary_fidelity": 1.0}


def test_a_pickled_checkpoint_is_refused_not_unpickled(tmp_path):
    """Serving and the teacher load safetensors only: a folder holding only
    pytorch_model.bin (a pickle, which can run code on load) is an error."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from raydistill.training.classifier import Classifier

    src = resolve_model("tiny-bert")
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=2)
    import torch

    (tmp_path / "pickled").mkdir()
    model.config.save_pretrained(tmp_path / "pickled")  # transformers 5 writes no .bin itself
    torch.save(model.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp_path / "pickled")
    assert (tmp_path / "pickled" / "pytorch_model.bin").exists()
    assert not list((tmp_path / "pickled").glob("*.safetensors"))
    with pytest.raises(OSError, match="safetensors"):
        Classifier(str(tmp_path / "pickled"))
    model.save_pretrained(tmp_path / "safe")  # the same weights as safetensors load
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp_path / "safe")
    assert Classifier(str(tmp_path / "safe")).model is not None
