"""Choosing and verifying counterfactual candidates: the teacher-scored half of CoD.

`FlipVerifier` (a Ray Data callable class) cleans every candidate the LLM wrote for a
seed, splices an edit of a shown excerpt back onto the whole input, scores all
candidates with the teacher in one forward and keeps the best flip (`choose_counterfactual`:
smallest edit, then most fluent). `counterfactuals.generate_counterfactuals` drives the
rounds around it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from raydistill.pipelines.counterfactual_checks import (
    REJECT_KEPT_CHANGED,
    REJECT_NOT_MINIMAL,
    clean_candidate,
    edits_kept_side,
    is_minimal,
    pair_inputs,
    split_pair_reply,
)
from raydistill.pipelines.edits import word_edit_distance
from raydistill.pipelines.fluency import REJECT_NOT_FLUENT
from raydistill.pipelines.prompts import splice, split_for_prompt
from raydistill.telemetry import count_rows
from raydistill.training.classifier import Classifier, softmax


def rank_flips(flips: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flipping candidates best first: the smallest word edit, then the most fluent
    (highest `fluency["delta"]`; unscored last), then the order they came in."""

    def key(i_f: tuple[int, dict[str, Any]]):
        i, f = i_f
        delta = (f.get("fluency") or {}).get("delta")
        unscored = delta is None or delta != delta  # None or nan
        return (f["edit_words"], unscored, 0.0 if unscored else -delta, i)

    return [f for _, f in sorted(enumerate(flips), key=key)]


# (original, edited texts) → one fluency dict per text (`FluencyScorer.fluency_many`).
FluencyFn = Callable[[str, list[str]], list[dict[str, Any]]]


def choose_counterfactual(
    original: str,
    candidates: list[str],
    candidate_probs: np.ndarray,
    target: int,
    *,
    fluency: FluencyFn | None = None,
    min_fluency_delta: float | None = None,
) -> dict[str, Any]:
    """Pick the flipping candidate with the smallest word edit distance.

    `candidates` are already cleaned; `candidate_probs[i]` is the teacher's distribution on
    candidate i. If none flips, report the candidate closest to flipping (highest target
    probability) so the next round can give the LLM feedback on it.

    With `fluency`, ties on edit size go to the most fluent candidate (`rank_flips`), and
    with `min_fluency_delta` a flip whose delta is below it is dropped (counted in
    `not_fluent`). Only the smallest edit size's flips are scored, the next size's only
    if all of those were dropped. `had_flip`: some candidate flipped, fluent or not.
    """
    flips: list[dict[str, Any]] = []
    closest: tuple[float, str] | None = None
    for text, probs in zip(candidates, candidate_probs, strict=True):
        if int(np.argmax(probs)) == target:
            flips.append(
                {
                    "text": text,
                    "edit_words": word_edit_distance(original, text),
                    "probs": [float(x) for x in probs],
                }
            )
        if closest is None or probs[target] > closest[0]:
            closest = (float(probs[target]), text)
    best, not_fluent = None, 0
    for size in sorted({f["edit_words"] for f in flips}):
        group = [f for f in flips if f["edit_words"] == size]
        if fluency is not None:
            for f, fl in zip(group, fluency(original, [f["text"] for f in group]), strict=True):
                f["fluency"] = fl
            if min_fluency_delta is not None:
                ok = [f for f in group if f["fluency"]["delta"] >= min_fluency_delta]
                not_fluent += len(group) - len(ok)
                group = ok
        if group:
            best = rank_flips(group)[0]
            break
    if best is not None:
        return {"flipped": True, **best, "closest": "", "not_fluent": not_fluent, "had_flip": True}
    return {
        "flipped": False,
        "text": "",
        "edit_words": -1,
        "probs": [],
        "closest": closest[1] if closest else "",
        "not_fluent": not_fluent,
        "had_flip": bool(flips),
    }


class FlipVerifier:
    """Ray Data callable class: clean every candidate, score all with the teacher at once."""

    def __init__(
        self,
        teacher_dir: str,
        max_length: int = 64,
        *,
        noun: str | None = None,
        label_names: tuple[str, ...] = (),
        max_edit_fraction: float | None = None,
        max_input_chars: int | None = None,
        shown_paragraphs: int | None = None,
        edit_side: str = "text_pair",
        pair_names: tuple[str, str] | None = None,
        fluency_model: str | None = None,
        min_fluency_delta: float | None = None,
    ):
        self.clf = Classifier(teacher_dir, max_length=max_length)
        # A causal LM folder: flipping candidates are ranked by fluency after edit size
        # (`choose_counterfactual`); it loads on the first flip, once per process.
        self.fluency_model = fluency_model
        self.min_fluency_delta = min_fluency_delta if fluency_model else None
        self.clean_kwargs = dict(
            noun=noun, label_names=tuple(label_names), max_edit_fraction=max_edit_fraction
        )
        # The prompt showed only this many characters: candidates edit that part.
        self.max_input_chars = max_input_chars
        self.shown_paragraphs = shown_paragraphs
        # Sentence pairs: rows carry `kept` (the side left verbatim) beside `text` (the
        # side edited); replies may name both sides ("Premise: ...").
        self.edit_side = edit_side
        first, second = pair_names or ("first text", "second text")
        self.side_names = (second, first) if edit_side == "text_pair" else (first, second)

    def _clean(self, raw: Any, shown: str, kept: str | None) -> tuple[str | None, str]:
        """One candidate → (edited text, "") or (None, reason)."""
        if kept is None:
            return clean_candidate(raw, shown, **self.clean_kwargs)
        edited_name, kept_name = self.side_names
        raw, reason = split_pair_reply(raw, kept, kept_name, edited_name)
        if raw is None:
            return None, reason
        # Which side was edited is decided before minimality: a rewrite of the premise
        # is named for what it is, not as a long edit of the hypothesis.
        loose = dict(self.clean_kwargs, max_edit_fraction=None)
        text, reason = clean_candidate(raw, shown, **loose)
        if text is None:
            return None, reason
        if edits_kept_side(text, kept, shown):
            return None, REJECT_KEPT_CHANGED
        if not is_minimal(shown, text, self.clean_kwargs["max_edit_fraction"]):
            return None, REJECT_NOT_MINIMAL
        return text, ""

    def _fluency(self, original: str, texts: list[str]) -> list[dict[str, Any]]:
        from raydistill.pipelines.fluency import scorer_for

        return scorer_for(self.fluency_model).fluency_many(original, texts)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = len(batch["id"])
        cleaned: list[list[str]] = []
        rejects: list[dict[str, int]] = []
        flat: list[str] = []
        kept_sides = [str(k) for k in batch["kept"]] if "kept" in batch else None
        flat_kept: list[str] = []
        for i in range(n):
            kept, why = [], Counter()
            whole = str(batch["text"][i])
            shown, rest = split_for_prompt(whole, self.max_input_chars, self.shown_paragraphs)
            side = kept_sides[i] if kept_sides is not None else None
            for raw in list(batch["candidates"][i]):
                text, reason = self._clean(raw, shown, side)
                if text is not None and rest:
                    # Splice the edited part back onto the part the model never saw.
                    text = splice(re.sub(r"\s*(…|\.\.\.)$", "", text), whole, shown, rest)
                if text is None:
                    why[reason] += 1
                elif text not in kept:
                    kept.append(text)
                else:
                    why["duplicate"] += 1
            if batch["llm_error"][i]:
                why["llm_error"] += 1
            cleaned.append(kept)
            rejects.append(dict(why))
            flat.extend(kept)
            if side is not None:
                flat_kept.extend([side] * len(kept))
        # Logits and pooled hidden states of every candidate in one forward: the chosen
        # one's are stored with the record, so training never runs the teacher again.
        inputs = pair_inputs(flat, flat_kept if kept_sides is not None else None, self.edit_side)
        if flat:
            logits, hidden = self.clf.logits_and_hidden(inputs)
        else:
            logits, hidden = np.zeros((0, self.clf.num_labels)), np.zeros((0, 1, 1))
        probs = softmax(logits)
        out: dict[str, list[Any]] = {
            k: []
            for k in (
                "flipped",
                "cf_text",
                "edit_words",
                "cf_logits",
                "cf_hidden",
                "closest",
                "rejects",
                "num_valid",
                "fluency",
                "had_flip",
            )
        }
        pos = 0
        for i in range(n):
            k = len(cleaned[i])
            res = choose_counterfactual(
                str(batch["text"][i]),
                cleaned[i],
                probs[pos : pos + k],
                int(batch["target"][i]),
                fluency=self._fluency if self.fluency_model else None,
                min_fluency_delta=self.min_fluency_delta,
            )
            if res["not_fluent"]:
                rejects[i][REJECT_NOT_FLUENT] = res["not_fluent"]
            j = pos + cleaned[i].index(res["text"]) if res["flipped"] else None
            pos += k
            out["flipped"].append(res["flipped"])
            out["cf_text"].append(res["text"])
            out["edit_words"].append(res["edit_words"])
            # JSON text, not nested lists: a batch where every row flipped would make
            # numpy stack the lists into a 2-D column, which Ray Data stores as a tensor
            # and then cannot concatenate with a mixed batch's list column (seen at
            # 1,228 seeds: "Trying to unify unsupported tensor type: list<item: double>").
            out["cf_logits"].append(json.dumps(logits[j].tolist() if j is not None else []))
            out["cf_hidden"].append(json.dumps(hidden[j].tolist() if j is not None else []))
            out["closest"].append(res["closest"])
            out["rejects"].append(json.dumps(rejects[i]))
            out["num_valid"].append(k)
            out["fluency"].append(json.dumps(res.get("fluency") or {}))
            out["had_flip"].append(res["had_flip"])
        count_rows("verify", n)
        batch = dict(batch)
        batch.pop("candidates", None)
        batch.pop("messages", None)
        batch.update({k: object_column(v) for k, v in out.items()})
        return batch


def object_column(values: list[Any]) -> np.ndarray:
    """A 1-D object array of `values`, whatever they are (`np.array` would stack
    equal-length lists into a 2-D array: another column type for Ray Data)."""
    col = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        col[i] = v
    return col
