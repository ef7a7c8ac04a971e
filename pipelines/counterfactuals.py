"""Teacher-verified counterfactual generation (CoD) as Ray Data stages.

Per seed: prompt the LLM teacher pool for a minimal edit toward a target label (binary:
the other label; multi-class: the teacher's runner-up), sample n candidates, clean them
(LLM output is untrusted), verify each with the teacher classifier (a flip = the teacher's
argmax becomes the target), keep the flipping candidate with the smallest word edit
distance, and retry the seeds that got none for up to R rounds with feedback.

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
from pathlib import Path
from typing import Any

import numpy as np

from raydistill.config import CounterfactualConfig
from raydistill.pipelines.counterfactual_checks import clean_candidate
from raydistill.pipelines.edits import word_edit_distance
from raydistill.pipelines.llm_requests import LLMClient
from raydistill.pipelines.prompts import split_for_prompt
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


def choose_counterfactual(
    original: str,
    candidates: list[str],
    candidate_probs: np.ndarray,
    target: int,
) -> dict[str, Any]:
    """Pick the flipping candidate with the smallest word edit distance.

    `candidates` are already cleaned; `candidate_probs[i]` is the teacher's distribution on
    candidate i. If none flips, report the candidate closest to flipping (highest target
    probability) so the next round can give the LLM feedback on it.
    """
    best: dict[str, Any] | None = None
    closest: tuple[float, str] | None = None
    for text, probs in zip(candidates, candidate_probs, strict=True):
        flipped = int(np.argmax(probs)) == target
        if flipped:
            d = word_edit_distance(original, text)
            if best is None or d < best["edit_words"]:
                best = {"text": text, "edit_words": d, "probs": [float(x) for x in probs]}
        if closest is None or probs[target] > closest[0]:
            closest = (float(probs[target]), text)
    if best is not None:
        return {"flipped": True, **best, "closest": ""}
    return {
        "flipped": False,
        "text": "",
        "edit_words": -1,
        "probs": [],
        "closest": closest[1] if closest else "",
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
    ):
        self.clf = Classifier(teacher_dir, max_length=max_length)
        self.clean_kwargs = dict(
            noun=noun, label_names=tuple(label_names), max_edit_fraction=max_edit_fraction
        )
        # The prompt showed only this many characters: candidates edit that part.
        self.max_input_chars = max_input_chars

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = len(batch["id"])
        cleaned: list[list[str]] = []
        rejects: list[dict[str, int]] = []
        flat: list[str] = []
        for i in range(n):
            kept, why = [], Counter()
            shown, rest = split_for_prompt(str(batch["text"][i]), self.max_input_chars)
            for raw in list(batch["candidates"][i]):
                text, reason = clean_candidate(raw, shown, **self.clean_kwargs)
                if text is not None and rest:
                    # Splice the edited part back onto the part the model never saw.
                    text = re.sub(r"\s*(…|\.\.\.)$", "", text) + " " + rest
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
        # Logits and pooled hidden states of every candidate in one forward: the chosen
        # one's are stored with the record, so training never runs the teacher again.
        if flat:
            logits, hidden = self.clf.logits_and_hidden(flat)
        else:
            logits, hidden = np.zeros((0, self.clf.num_labels)), np.zeros((0, 1, 1))
        probs = softmax(logits)
        index = {t: j for j, t in enumerate(flat)}
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
            )
        }
        pos = 0
        for i in range(n):
            k = len(cleaned[i])
            res = choose_counterfactual(
                str(batch["text"][i]), cleaned[i], probs[pos : pos + k], int(batch["target"][i])
            )
            pos += k
            out["flipped"].append(res["flipped"])
            out["cf_text"].append(res["text"])
            out["edit_words"].append(res["edit_words"])
            j = index.get(res["text"]) if res["flipped"] else None
            out["cf_logits"].append(logits[j].tolist() if j is not None else [])
            out["cf_hidden"].append(hidden[j].tolist() if j is not None else [])
            out["closest"].append(res["closest"])
            out["rejects"].append(json.dumps(rejects[i]))
            out["num_valid"].append(k)
        count_rows("verify", n)
        batch = dict(batch)
        batch.pop("candidates", None)
        batch.pop("messages", None)
        batch.update({k: np.array(v, dtype=object) for k, v in out.items()})
        return batch


@dataclass
class GenerationStats:
    seeds: int = 0
    flipped: int = 0
    candidates: int = 0
    generated_tokens: int = 0
    wall_s: float = 0.0
    rejects: dict[str, int] = field(default_factory=dict)
    edit_words: list[int] = field(default_factory=list)
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
    progress: Callable[[str], None] | None = None,
) -> tuple[list[dict[str, Any]], GenerationStats]:
    """Seeds (annotated with `teacher_logits`) → one counterfactual record per seed.

    `llm` is the `LLMClient` every request goes through (its cache makes a rerun repeat
    no finished request). For old callers, an `Endpoint` works too (positionally or as
    `endpoint=`, with `batch_size` / `concurrency`): it gets an uncached client. Raises
    `LLMStageError` when more than the client's `max_error_fraction` of one round's
    requests fail. `gen.strategy` picks how candidates are written: "rewrite" (the LLM
    rewrites the text, the CoD paper's prompt) or "swap" (teacher-guided word swaps,
    `pipelines/swaps.py`).
    """
    llm = _client(llm, endpoint, batch_size, concurrency)
    if teacher_dir is None or gen is None:
        raise TypeError("generate_counterfactuals() needs teacher_dir and gen")
    stats = GenerationStats(seeds=len(seeds))
    if not seeds:
        return [], stats
    before = llm.stats.snapshot()
    pending: dict[str, dict[str, Any]] = {}
    for s in seeds:
        src, tgt = target_label(softmax(np.asarray(s["teacher_logits"], dtype=np.float64)))
        pending[s["id"]] = {
            "id": s["id"],
            "text": s["text"],
            "label": int(s["label"]),
            "source_label": src,
            "target": tgt,
            "previous": "",
            "attempts": 0,
            "tokens": 0,
        }
    done: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    verifier = dict(
        teacher_dir=teacher_dir,
        teacher_max_length=teacher_max_length,
        # GPU share of the verifier / saliency actors (teacher.num_gpus).
        teacher_num_gpus=teacher_num_gpus,
        spec=spec,
        gen=gen,
    )
    from raydistill.pipelines.generation_rounds import rewrite_rounds, swap_rounds

    if gen.strategy == "swap":
        rounds = swap_rounds(pending, spec, llm, gen, verifier)
    elif gen.strategy == "rewrite":
        rounds = rewrite_rounds(pending, spec, llm, gen, verifier)
    else:
        raise ValueError(f"generation.strategy must be 'rewrite' or 'swap', got {gen.strategy!r}")
    for rnd, results in rounds:
        for r in results:
            p = pending[r["id"]]
            p["attempts"] += int(r["num_asked"])
            p["tokens"] += int(r.get("generated_tokens") or 0)
            stats.candidates += int(r["num_asked"])
            for k, v in json.loads(r["rejects"]).items():
                stats.rejects[k] = stats.rejects.get(k, 0) + int(v)
            if bool(r["flipped"]):
                done[p["id"]] = _record(p, r, source, rnd, True)
                del pending[p["id"]]
                stats.rounds_used[rnd] = stats.rounds_used.get(rnd, 0) + 1
            else:
                p["previous"] = str(r["closest"] or "")
                if rnd == gen.rounds:
                    done[p["id"]] = _record(p, r, source, rnd, False)
        if progress:
            flipped = sum(1 for d in done.values() if d["flipped"])
            left = len(pending) if rnd < gen.rounds else 0
            progress(
                f"round {rnd}/{gen.rounds}: {flipped}/{stats.seeds} seeds flipped, {left} retrying"
            )
    stats.wall_s = time.perf_counter() - t0
    stats.llm = llm.stats.since(before).summary()
    records = [done[s["id"]] for s in seeds]
    for rec in records:
        stats.generated_tokens += rec["generated_tokens"]
        if rec["flipped"]:
            stats.flipped += 1
            stats.edit_words.append(rec["edit_words"])
    set_gauge(FLIP_RATE, stats.flip_rate, task=spec.name)
    set_gauge(GEN_TOKENS_PER_S, stats.tokens_per_s, model=source)
    return records, stats


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


def _record(
    p: dict[str, Any], r: dict[str, Any], source: str, rnd: int, flipped: bool
) -> dict[str, Any]:
    return {
        "id": f"{p['id']}/cf",
        "parent_id": p["id"],
        "source": source,
        "text": str(r["cf_text"]) if flipped else "",
        "label": int(p["target"]),
        "parent_label": int(p["label"]),
        "flipped": flipped,
        "rounds": rnd,
        "attempts": int(p["attempts"]),
        "edit_words": int(r["edit_words"]) if flipped else -1,
        "teacher_logits": _floats(r["cf_logits"]) if flipped else [],
        "teacher_hidden": _floats(r["cf_hidden"]) if flipped else [],
        "teacher_pred": int(p["target"]) if flipped else -1,
        "generated_tokens": int(p["tokens"]),
    }


def _floats(x: Any) -> list:
    """Arrow/numpy nested arrays → plain nested lists of float."""
    return np.asarray(x.tolist() if hasattr(x, "tolist") else x, dtype=np.float32).tolist()


def human_counterfactual_records(
    seeds: list[dict[str, Any]],
    human: dict[str, dict[str, Any]],
    teacher_dir: str,
    max_length: int = 64,
) -> tuple[list[dict[str, Any]], GenerationStats]:
    """IMDB-CAD: the human minimal edit of each seed, verified by the teacher all the same.

    The human label is kept (it is the ground truth); `flipped` records whether the
    teacher agrees with it, which the report shows as teacher/human agreement.
    """
    stats = GenerationStats(seeds=len(seeds))
    missing = [s["id"] for s in seeds if s["id"] not in human]
    if missing:
        raise KeyError(f"no human counterfactual for seed ids {missing[:5]}")
    clf = Classifier(teacher_dir, max_length=max_length)
    texts = [human[s["id"]]["text"] for s in seeds]
    logits, hidden = clf.logits_and_hidden(texts)
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
            }
        )
        stats.flipped += int(agrees)
        stats.edit_words.append(d)
    return records, stats


def save_records(records: list[dict[str, Any]], path: str | Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.parquet")
    pq.write_table(pa.Table.from_pylist(records), tmp)
    tmp.rename(path)


def load_records(path: str | Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
