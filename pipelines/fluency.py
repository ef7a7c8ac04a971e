"""Fluency of counterfactual edits: does the edit still read as language?

A teacher-verified flip can be adversarial noise ("variety of warrantitude", "build some
reboids"): it moves the teacher, but it is not a plausible minimal edit. Two measures,
under a bundled causal LM that is not the generator (`method.counterfactuals.
fluency_model`, Gemma-3-270M base by default; a model judging its own output would
favour it):

- `lp_orig`, `lp_edit`: the LM's mean log-probability per token (nats) of the original
  and of the edited text, and `delta = lp_edit - lp_orig`. Both are scored on the same
  window (`edits.edit_window`: the changed region with `context_chars` of shared text
  either side), so a one-word edit of a long review is not diluted over hundreds of
  unchanged tokens; short texts (SST-2) are scored whole. delta ≈ 0: as fluent as the
  original; an invented word costs several nats per sub-word token.
- `oov_words`: inserted words (`edits.inserted_words`) that are not one token of the LM's
  vocabulary as a whole word (`FluencyScorer.is_whole_word`).

`choose_counterfactual` ranks a seed's flipping candidates by edit size, then by delta,
and with `min_fluency_delta` drops those below it (`not_fluent`). The LM loads once per
process (`scorer_for`); only flipping candidates and their originals are scored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from raydistill.pipelines.edits import edit_window, inserted_words

# Bump when what is scored changes (window, tokens, whole-word rule): it is part of the
# generation cache key whenever a fluency model ranks candidates.
FLUENCY_VERSION = 1
# Reject reason of a flipping candidate whose delta is below `min_fluency_delta`.
REJECT_NOT_FLUENT = "not_fluent"
# What every counterfactual record carries (None / [] when not scored).
RECORD_FIELDS: dict[str, Any] = {
    "lp_orig": None,
    "lp_edit": None,
    "lp_delta": None,
    "inserted_words": [],
    "oov_words": [],
}
# Markers BPE / SentencePiece vocabularies put on a word that follows a space.
_SPACE_MARKERS = ("Ġ", "▁")


def oov_words(inserted: Iterable[str], is_whole_word: Callable[[str], bool]) -> list[str]:
    """The inserted words that `is_whole_word` does not know, in order.

    A contraction or possessive ("wouldn't", "film's") counts by its stem: vocabularies
    split off the "'t" / "'s", and the stem is what could be invented.
    """
    out = []
    for w in inserted:
        stem = w.split("'", 1)[0] or w
        if not any(c.isalpha() for c in stem):
            continue
        if not is_whole_word(stem):
            out.append(w)
    return out


def fluency_fields(lp_orig: float, lp_edit: float, inserted: list[str], oov: list[str]):
    """A record's fluency fields (`RECORD_FIELDS`) from the two scores and the words."""
    return {
        "lp_orig": round(float(lp_orig), 4),
        "lp_edit": round(float(lp_edit), 4),
        "lp_delta": round(float(lp_edit) - float(lp_orig), 4),
        "inserted_words": list(inserted),
        "oov_words": list(oov),
    }


def with_fluency_defaults(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with every fluency field present (records cached before fluency lack
    them; a parquet table takes its columns from the first row)."""
    for k, v in RECORD_FIELDS.items():
        record.setdefault(k, list(v) if isinstance(v, list) else v)
    return record


def fluency_summary(records: list[dict[str, Any]], **extra: Any) -> dict[str, Any] | None:
    """Mean delta, share of edits with an out-of-vocabulary insertion, n: over the
    records that carry an edit and a score (LLM edits: the verified flips)."""
    scored = [
        r
        for r in records
        if r.get("lp_delta") is not None
        and not (isinstance(r["lp_delta"], float) and math.isnan(r["lp_delta"]))
    ]
    if not scored:
        return None

    def mean(key: str) -> float:
        return round(sum(float(r[key]) for r in scored) / len(scored), 4)

    return {
        "n": len(scored),
        "mean_delta": mean("lp_delta"),
        "mean_lp_orig": mean("lp_orig"),
        "mean_lp_edit": mean("lp_edit"),
        "share_delta_negative": round(sum(r["lp_delta"] < 0 for r in scored) / len(scored), 4),
        "share_with_oov": round(sum(bool(r.get("oov_words")) for r in scored) / len(scored), 4),
        **extra,
    }


class FluencyScorer:
    """A causal LM folder → mean log-probability per token of texts (CPU, fp32, no grad).

    fp32, not bf16: deltas of a few hundredths of a nat matter here, and bf16 logits over
    a 262k vocabulary are off by about that much in the log-sum-exp.
    """

    def __init__(
        self,
        model_dir: str,
        *,
        context_chars: int = 200,
        max_tokens: int = 256,
        batch_tokens: int = 512,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = str(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=torch.float32, use_safetensors=True
        ).eval()
        self.context_chars = context_chars
        self.max_tokens = max_tokens
        # Tokens per forward: the logits are tokens × vocabulary floats (512 × 262k × 4
        # bytes = 0.5 GB for Gemma), so batches are sized by tokens, not rows.
        self.batch_tokens = batch_tokens
        tok = self.tokenizer
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        # The first word is predicted from BOS (or EOS, as GPT-2 style models are
        # trained); with neither, the first token is context only.
        self._start = [] if start is None else [int(start)]
        self._lp: dict[str, float] = {}
        self._whole: dict[str, bool] = {}

    def _ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._start + list(ids)[: self.max_tokens]

    def score(self, texts: list[str]) -> list[float]:
        """Mean log-probability per token (nats) of each text; nan for an empty text.
        Scores are cached by text (an original is scored once for all its candidates)."""
        todo = sorted({t for t in texts if t not in self._lp}, key=lambda t: len(self._ids(t)))
        batch: list[tuple[str, list[int]]] = []
        for t in todo:
            ids = self._ids(t)
            if batch and (len(batch) + 1) * len(ids) > self.batch_tokens:
                self._score_batch(batch)
                batch = []
            batch.append((t, ids))
        if batch:
            self._score_batch(batch)
        return [self._lp[t] for t in texts]

    def _score_batch(self, batch: list[tuple[str, list[int]]]) -> None:
        import torch

        width = max(len(ids) for _, ids in batch)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (_, ids) in enumerate(batch):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        with torch.no_grad():
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits.float()
            nxt = input_ids[:, 1:]
            lse = torch.logsumexp(logits[:, :-1], dim=-1)
            lp = logits[:, :-1].gather(-1, nxt.unsqueeze(-1)).squeeze(-1) - lse
            keep = mask[:, 1:].float()
            sums = (lp * keep).sum(-1)
            counts = keep.sum(-1)
        for i, (t, _) in enumerate(batch):
            n = float(counts[i])
            self._lp[t] = float(sums[i]) / n if n else float("nan")

    def is_whole_word(self, word: str) -> bool:
        """Is `word` one token of the vocabulary as a whole word?

        "Whole word" for a BPE / SentencePiece vocabulary: the word as it appears after
        a space mid-sentence (" word", which the vocabulary marks "Ġword" or "▁word") is
        a single token. A word split into pieces ("▁warrant" + "itude") is one the LM
        never saw whole: invented, misspelt or rare. Lower-case, as-is and capitalised
        forms all count ("awful" is one token where "Awful" is two; "Spielberg" where
        "spielberg" is not). A proxy: with Gemma's 262k vocabulary everyday English is
        whole; with a small vocabulary many real words are split.
        """
        if word not in self._whole:
            self._whole[word] = any(
                self._single_token(" " + v) for v in {word, word.lower(), word.capitalize()}
            )
        return self._whole[word]

    def _single_token(self, text: str) -> bool:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces = self.tokenizer.convert_ids_to_tokens(list(ids))
        # A tokenizer that emits the space as its own marker piece ("▁", "word").
        pieces = [p for p in pieces if p not in _SPACE_MARKERS and p.strip()]
        return len(pieces) == 1

    def fluency(self, original: str, edited: str) -> dict[str, Any]:
        """`lp_orig`, `lp_edit`, `delta` (per token, on the changed window),
        `inserted_words` and `oov_words` of one edit."""
        return self.fluency_many(original, [edited])[0]

    def fluency_many(self, original: str, edited: list[str]) -> list[dict[str, Any]]:
        """`fluency` for several edits of one original, scored in one pass."""
        return self.fluency_pairs([(original, e) for e in edited])

    def fluency_pairs(self, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """`fluency` of each (original, edited) pair, scored in one pass."""
        windows = [edit_window(o, e, self.context_chars)[:2] for o, e in pairs]
        scores = self.score([w for pair in windows for w in pair])
        out = []
        for i, (o, e) in enumerate(pairs):
            ins = inserted_words(o, e)
            f = fluency_fields(
                scores[2 * i], scores[2 * i + 1], ins, oov_words(ins, self.is_whole_word)
            )
            out.append({"delta": f["lp_delta"], **f})
        return out


_SCORERS: dict[str, FluencyScorer] = {}


def scorer_for(model_dir: str) -> FluencyScorer:
    """The process's scorer for `model_dir`, loaded once (verifier actors, the driver)."""
    if model_dir not in _SCORERS:
        _SCORERS[model_dir] = FluencyScorer(model_dir)
    return _SCORERS[model_dir]
