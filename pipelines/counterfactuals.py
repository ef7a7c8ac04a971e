"""Teacher-verified counterfactual generation (CoD) as Ray Data stages.

Per seed: prompt the LLM teacher pool for a minimal edit toward a target label (binary:
the other label; multi-class: the teacher's runner-up, or each other class with
`targets: all`), sample n candidates, clean them
(LLM output is untrusted), verify each with the teacher classifier (a flip = the teacher's
argmax becomes the target), keep the flipping candidate with the smallest word edit
distance (ties: the most fluent under a separate LM, `fluency.py`; with a threshold,
non-fluent flips are dropped as `not_fluent`), and retry the seeds that got none for up
to R rounds with feedback. Records are `counterfactual_records.py`.

Sentence pairs (rows with `text_pair`): one side is edited (`edit_side`), the other is
kept verbatim; the teacher always reads the whole pair, and a candidate that changes the
kept side is rejected (`kept_side_changed`).

Every seed comes out as one record, flipped or not, with its attempts, rejections by
reason and teacher probabilities, so nothing is lost silently and the report can count
what failed. Every LLM call goes through `pipelines/llm_requests.py:LLMClient` (cached,
retried, failing loudly when most requests fail); the CoD-specific checks of an answer
are `pipelines/counterfactual_checks.py`.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raydistill.config import CounterfactualConfig
from raydistill.pipelines.counterfactual_checks import (
    REJECT_KEPT_CHANGED,
    REJECT_NOT_MINIMAL,
    clean_candidate,
    edits_kept_side,
    is_minimal,
    kept_side_intact,
    pair_inputs,
    split_pair_reply,
)
from raydistill.pipelines.counterfactual_records import (
    human_fluency,
    llm_record,
)
from raydistill.pipelines.counterfactual_records import load_records as load_records
from raydistill.pipelines.counterfactual_records import save_records as save_records
from raydistill.pipelines.edits import word_edit_distance
from raydistill.pipelines.fluency import REJECT_NOT_FLUENT, with_fluency_defaults
from raydistill.pipelines.llm_requests import LLMClient
from raydistill.pipelines.prompts import splice, split_for_prompt
from raydistill.pipelines.tasks import TaskSpec
from raydistill.telemetry import FLIP_RATE, GEN_TOKENS_PER_S, count_rows, set_gauge
from raydistill.training.classifier import Classifier, softmax


def target_label(teacher_probs: list[float] | np.ndarray) -> tuple[int, int]:
    """(source, target): the teacher's prediction and the class to flip it to.

    Binary: the other class. Multi-class: the runner-up, the cheapest class to reach
    with a minimal edit.
    """
    p = np.asarray(teacher_probs, dtype=np.float64)
    order = np.argsort(-p, kind="stable")
    return int(order[0]), int(order[1])


TARGET_POLICIES = ("runner_up", "all")


def target_labels(teacher_probs: list[float] | np.ndarray, policy: str = "runner_up"):
    """(source, [targets]): the teacher's prediction and the classes to flip it to.

    runner_up: the runner-up alone (`target_label`). all: every other class, most
    likely first.
    """
    if policy not in TARGET_POLICIES:
        raise ValueError(f"targets must be one of {TARGET_POLICIES}, got {policy!r}")
    p = np.asarray(teacher_probs, dtype=np.float64)
    order = [int(i) for i in np.argsort(-p, kind="stable")]
    return order[0], (order[1:2] if policy == "runner_up" else order[1:])


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


@dataclass
class GenerationStats:
    seeds: int = 0
    flipped: int = 0
    candidates: int = 0
    generated_tokens: int = 0
    wall_s: float = 0.0
    rejects: dict[str, int] = field(default_factory=dict)
    edit_words: list[int] = field(default_factory=list)
    # Items with a flipping candidate before the fluency threshold (= flipped without
    # one): the flip rate the threshold cost.
    flipped_unfiltered: int = 0
    rounds_used: dict[int, int] = field(default_factory=dict)
    # The request layer's counts for this generation (`LLMStats.summary()`): requests
    # sent, cache hits, errors by kind, tokens.
    llm: dict[str, Any] = field(default_factory=dict)

    @property
    def flip_rate(self) -> float:
        return self.flipped / self.seeds if self.seeds else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Tokens generated by the pool in this run per second (cache hits excluded)."""
        fresh = self.generated_tokens - int(self.llm.get("cached_generated_tokens", 0))
        return max(fresh, 0) / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "seeds": self.seeds,
            "flipped": self.flipped,
            "no_counterfactual": self.seeds - self.flipped,
            "flip_rate": round(self.flip_rate, 4),
            "flip_rate_unfiltered": round(self.flipped_unfiltered / self.seeds, 4)
            if self.seeds
            else 0.0,
            "mean_edit_words": round(float(np.mean(self.edit_words)), 2)
            if self.edit_words
            else None,
            "candidates": self.candidates,
            "generated_tokens": self.generated_tokens,
            "wall_s": round(self.wall_s, 2),
            "tokens_per_s": round(self.tokens_per_s, 1),
            "rejects": dict(sorted(self.rejects.items())),
            "rounds_used": {str(k): v for k, v in sorted(self.rounds_used.items())},
            "llm": dict(self.llm),
        }


def generate_counterfactuals(
    seeds: list[dict[str, Any]],
    spec: TaskSpec,
    llm: LLMClient | Any = None,
    teacher_dir: str | None = None,
    gen: CounterfactualConfig | None = None,
    *,
    source: str,
    endpoint: Any = None,
    batch_size: int | None = None,
    concurrency: int | None = None,
    teacher_max_length: int = 64,
    teacher_num_gpus: float = 0.0,
    teacher_num_cpus: float = 1.0,
    progress: Callable[[str], None] | None = None,
    class_words: dict[str, list[str]] | None = None,
    fluency_dir: str | None = None,
) -> tuple[list[dict[str, Any]], GenerationStats]:
    """Seeds (annotated with `teacher_logits`) → one counterfactual record per seed and
    target class (`gen.targets`: the runner-up, or every other class).

    `class_words` (label name → typical words of the class in the training split,
    `class_words.py`) are the few-shot demonstrations of multi-class prompts. Seeds with
    `text_pair` are sentence pairs: `gen.edit_side` is edited, the other side kept.
    With `targets: all` a record's id is `<seed id>>t<target>/cf`; with the runner-up it
    is `<seed id>/cf`. `GenerationStats.seeds` counts (seed, target) items.

    `llm` is the `LLMClient` every request goes through (its cache makes a rerun repeat
    no finished request). For old callers, an `Endpoint` works too (positionally or as
    `endpoint=`, with `batch_size` / `concurrency`): it gets an uncached client. Raises
    `LLMStageError` when more than the client's `max_error_fraction` of one round's
    requests fail. `fluency_dir` (a causal LM folder, `pipelines/fluency.py`): flips are
    scored and ranked by fluency after edit size, below `gen.min_fluency_delta` dropped;
    without it, records carry no fluency scores. `gen.strategy` picks how candidates are written: "rewrite" (the LLM
    rewrites the text, the CoD paper's prompt) or "swap" (teacher-guided word swaps,
    `pipelines/swaps.py`).
    """
    llm = _client(llm, endpoint, batch_size, concurrency)
    if teacher_dir is None or gen is None:
        raise TypeError("generate_counterfactuals() needs teacher_dir and gen")
    if not seeds:
        return [], GenerationStats()
    before = llm.stats.snapshot()
    pending = pending_items(seeds, gen)
    order = list(pending)
    stats = GenerationStats(seeds=len(pending))
    done: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    verifier = dict(
        teacher_dir=teacher_dir,
        teacher_max_length=teacher_max_length,
        # GPU share of the verifier / saliency actors (teacher.num_gpus).
        teacher_num_gpus=teacher_num_gpus,
        # Their CPU share, which sets their torch threads (teacher.num_cpus).
        teacher_num_cpus=teacher_num_cpus,
        spec=spec,
        gen=gen,
        fluency_dir=fluency_dir,
    )
    from raydistill.pipelines.generation_rounds import rewrite_rounds, swap_rounds

    if gen.strategy == "swap":
        if progress:
            # Before the first round the teacher scores every word's removal: on IMDB
            # reviews (200 words x 256 tokens each) minutes with nothing else to show.
            progress(
                f"ranking the words of {len(pending)} seeds by the teacher's occlusion drop "
                f"(one teacher forward per word, teacher.num_cpus={teacher_num_cpus:g})"
            )
        rounds = swap_rounds(pending, spec, llm, gen, verifier, class_words)
    elif gen.strategy == "rewrite":
        rounds = rewrite_rounds(pending, spec, llm, gen, verifier, class_words)
    else:
        raise ValueError(f"generation.strategy must be 'rewrite' or 'swap', got {gen.strategy!r}")
    for rnd, results in rounds:
        for r in results:
            p = pending[r["id"]]
            p["attempts"] += int(r["num_asked"])
            p["tokens"] += int(r.get("generated_tokens") or 0)
            p["had_flip"] = bool(p.get("had_flip")) or bool(r.get("had_flip", r["flipped"]))
            stats.candidates += int(r["num_asked"])
            for k, v in json.loads(r["rejects"]).items():
                stats.rejects[k] = stats.rejects.get(k, 0) + int(v)
            if (
                bool(r["flipped"])
                and "kept" in p
                and not kept_side_intact(
                    p["original"], llm_record(p, r, source, rnd, True), p["edit_side"]
                )
            ):
                # Never by construction; checked all the same, since a pair whose kept
                # side moved is not the counterfactual of its seed.
                r = dict(r, flipped=False, closest="")
                stats.rejects[REJECT_KEPT_CHANGED] = stats.rejects.get(REJECT_KEPT_CHANGED, 0) + 1
            if bool(r["flipped"]):
                done[p["id"]] = llm_record(p, r, source, rnd, True)
                del pending[p["id"]]
                stats.rounds_used[rnd] = stats.rounds_used.get(rnd, 0) + 1
            else:
                p["previous"] = str(r["closest"] or "")
                if rnd == gen.rounds:
                    done[p["id"]] = llm_record(p, r, source, rnd, False)
        if progress:
            flipped = sum(1 for d in done.values() if d["flipped"])
            left = len(pending) if rnd < gen.rounds else 0
            progress(
                f"round {rnd}/{gen.rounds}: {flipped}/{stats.seeds} seeds flipped, {left} retrying"
            )
    stats.wall_s = time.perf_counter() - t0
    stats.llm = llm.stats.since(before).summary()
    records = [done[key] for key in order]
    for rec in records:
        stats.generated_tokens += rec["generated_tokens"]
        stats.flipped_unfiltered += int(rec["flip_unfiltered"])
        if rec["flipped"]:
            stats.flipped += 1
            stats.edit_words.append(rec["edit_words"])
    set_gauge(FLIP_RATE, stats.flip_rate, task=spec.name)
    set_gauge(GEN_TOKENS_PER_S, stats.tokens_per_s, model=source)
    return records, stats


def pending_items(seeds: list[dict[str, Any]], gen: CounterfactualConfig) -> dict[str, dict]:
    """One generation item per (seed, target class), keyed by its id.

    Sentence pairs: `text` is the side to edit, `kept` the other, `original` both.
    """
    policy = getattr(gen, "targets", "runner_up")
    side = getattr(gen, "edit_side", "text_pair")
    items: dict[str, dict[str, Any]] = {}
    for s in seeds:
        probs = softmax(np.asarray(s["teacher_logits"], dtype=np.float64))
        src, targets = target_labels(probs, policy)
        for tgt in targets:
            key = s["id"] if policy == "runner_up" else f"{s['id']}>t{tgt}"
            item = {
                "id": key,
                "parent_id": s["id"],
                "text": s["text"],
                "label": int(s["label"]),
                "source_label": src,
                "target": tgt,
                "previous": "",
                "attempts": 0,
                "tokens": 0,
            }
            if s.get("text_pair") is not None:
                kept_field = "text" if side == "text_pair" else "text_pair"
                item.update(
                    text=str(s[side]),
                    kept=str(s[kept_field]),
                    edit_side=side,
                    original={"text": s["text"], "text_pair": s["text_pair"]},
                )
            items[key] = item
    return items


def _client(llm: Any, endpoint: Any, batch_size: int | None, concurrency: int | None) -> LLMClient:
    """The `LLMClient` to use: the one given, or an uncached one for an old `Endpoint`."""
    if llm is not None and endpoint is not None:
        raise TypeError("generate_counterfactuals(): give llm or endpoint, not both")
    target = llm if llm is not None else endpoint
    if target is None:
        raise TypeError("generate_counterfactuals() needs llm (an LLMClient)")
    if isinstance(target, LLMClient):
        if batch_size is not None or concurrency is not None:
            raise TypeError(
                "generate_counterfactuals(): batch_size/concurrency are the LLMClient's "
                "settings; set them when building it"
            )
        return target
    if not hasattr(target, "chat_url"):
        raise TypeError(
            f"generate_counterfactuals(): llm must be an LLMClient (or an Endpoint), "
            f"got {type(target).__name__}"
        )
    return LLMClient.uncached(
        target,
        batch_size=32 if batch_size is None else batch_size,
        concurrency=1 if concurrency is None else concurrency,
    )


def human_counterfactual_records(
    seeds: list[dict[str, Any]],
    human: dict[str, dict[str, Any]],
    teacher_dir: str,
    max_length: int = 64,
    fluency_dir: str | None = None,
) -> tuple[list[dict[str, Any]], GenerationStats]:
    """IMDB-CAD: the human minimal edit of each seed, verified by the teacher all the same.

    The human label is kept (it is the ground truth); `flipped` records whether the
    teacher agrees with it, which the report shows as teacher/human agreement. With
    `fluency_dir` every edit is scored (`human_fluency`): the reference LLM edits are
    compared with.
    """
    stats = GenerationStats(seeds=len(seeds))
    missing = [s["id"] for s in seeds if s["id"] not in human]
    if missing:
        raise KeyError(f"no human counterfactual for seed ids {missing[:5]}")
    clf = Classifier(teacher_dir, max_length=max_length)
    texts = [human[s["id"]]["text"] for s in seeds]
    logits, hidden = clf.logits_and_hidden(texts)
    scores = human_fluency(seeds, human, fluency_dir) if fluency_dir else {}
    records = []
    for s, text, lg, hd in zip(seeds, texts, logits, hidden, strict=True):
        label = int(human[s["id"]]["label"])
        agrees = int(np.argmax(lg)) == label
        d = word_edit_distance(s["text"], text)
        records.append(
            {
                "id": f"{s['id']}/cf",
                "parent_id": s["id"],
                "source": "human:cad",
                "text": text,
                "label": label,
                "parent_label": int(s["label"]),
                "flipped": agrees,
                "rounds": 0,
                "attempts": 1,
                "edit_words": d,
                "teacher_logits": lg.tolist(),
                "teacher_hidden": hd.tolist(),
                "teacher_pred": int(np.argmax(lg)),
                "generated_tokens": 0,
                "original_text": s["text"],
                "flip_unfiltered": agrees,
                **with_fluency_defaults(dict(scores.get(s["id"], {}))),
            }
        )
        stats.flipped += int(agrees)
        stats.flipped_unfiltered += int(agrees)
        stats.edit_words.append(d)
    return records, stats
