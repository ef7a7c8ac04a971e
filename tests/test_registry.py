"""Model folders: a base model's materialized folder gets a chat template it can answer."""

import json
import shutil

from transformers import AutoTokenizer

from raydistill.registry import _ensure_chat_template, resolve_minilm

FEW_SHOT = [
    {"role": "system", "content": "Reply with the opposite."},
    {"role": "user", "content": "Opposite of 'good':"},
    {"role": "assistant", "content": "bad"},
    {"role": "user", "content": "Opposite of 'dull':"},
]


def _tokenizer_folder(tmp_path):
    """A tokenizer without a chat template (BERT's: no BOS token either)."""
    src = resolve_minilm()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        if (src / name).exists():
            shutil.copy(src / name, tmp_path / name)
    assert not json.loads((tmp_path / "tokenizer_config.json").read_text()).get("chat_template")
    return tmp_path


def test_a_base_model_folder_gets_the_transcript_template(tmp_path):
    folder = _tokenizer_folder(tmp_path)
    _ensure_chat_template(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    text = tok.apply_chat_template(FEW_SHOT, tokenize=False, add_generation_prompt=True)
    # The few-shot turns as lines a base model continues; the reply is the next words.
    assert text == "Reply with the opposite.\n\nOpposite of 'good': bad\nOpposite of 'dull':"


def test_the_transcript_starts_with_the_bos_token_when_there_is_one(tmp_path):
    folder = _tokenizer_folder(tmp_path)
    _ensure_chat_template(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    text = tok.apply_chat_template(FEW_SHOT[1:2], tokenize=False, bos_token="<bos>")
    assert text == "<bos>Opposite of 'good':"


def test_a_folder_with_its_own_template_is_left_alone(tmp_path):
    folder = _tokenizer_folder(tmp_path)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{{ messages[0]['content'] }}"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    _ensure_chat_template(folder)
    assert not (folder / "chat_template.jinja").exists()
    # And an existing chat_template.jinja (an instruct model's, or ours) is never rewritten.
    other = tmp_path / "other"
    other.mkdir()
    (other / "chat_template.jinja").write_text("mine")
    _ensure_chat_template(other)
    assert (other / "chat_template.jinja").read_text() == "mine"


def _parts(tmp_path, chunks):
    paths = []
    for i, data in enumerate(chunks, 1):
        p = tmp_path / f"part{i:02d}.bin"
        p.write_bytes(data)
        paths.append(p)
    return paths


def test_split_weights_join_in_order_and_only_with_the_right_digest(tmp_path):
    import hashlib

    import pytest

    from raydistill.registry import join_parts

    chunks = [b"GGUF" + bytes(range(7)), b"middle" * 1000, b"tail"]
    want = hashlib.sha256(b"".join(chunks)).hexdigest()
    parts = _parts(tmp_path, chunks)
    out = join_parts(parts, tmp_path / "out" / "model.gguf", want)
    assert out.read_bytes() == b"".join(chunks)
    # Reordered parts have the same bytes in another order: the digest refuses them,
    # names both digests and leaves no file (nor a temporary one) behind.
    bad = tmp_path / "bad" / "model.gguf"
    with pytest.raises(RuntimeError, match=want):
        join_parts(list(reversed(parts)), bad, want)
    assert not bad.parent.exists() or not any(bad.parent.iterdir())


def test_a_missing_weight_package_names_every_package_to_install(monkeypatch):
    import pytest

    from raydistill import registry

    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError) as e:
        registry.resolve_model("qwen2.5-coder-0.5b-instruct")
    for package in registry.QWEN_CODER_PARTS:
        assert package in str(e.value)
