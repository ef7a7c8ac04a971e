"""The two ways of writing counterfactual candidates, as rounds of Ray Data stages.

Each strategy is a generator of `(round, verified rows)`: it sends the pending seeds
through the teacher pool (`LLMClient.chat`: cached, so a rerun or a later round never
repeats a finished request), turns the answers into candidate texts and has the teacher
verify them (`FlipVerifier`); `generate_counterfactuals` keeps the flips, records the
rest and says which seeds are still pending before the next round is built.

- `rewrite_rounds`: the CoD paper's prompt, the LLM rewrites the text with a few words
  changed; later rounds name the closest failed attempt.
- `swap_rounds`: teacher-guided word swaps (`pipelines/swaps.py`).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from raydistill.pipelines.flip_verifier import FlipVerifier
from raydistill.pipelines.prompts import counterfactual_messages


def _verify(ds: Any, verifier: dict[str, Any], expected: int, rnd: int) -> list[dict[str, Any]]:
    """Rows with `candidates` → teacher-verified rows (one Ray Data stage), all of them."""
    import ray

    from raydistill.pipelines.swaps import edited_noun

    spec, gen = verifier["spec"], verifier["gen"]
    ds = ds.map_batches(
        FlipVerifier,
        fn_constructor_kwargs=dict(
            teacher_dir=verifier["teacher_dir"],
            max_length=verifier["teacher_max_length"],
            noun=edited_noun(spec, gen.edit_side),
            label_names=tuple(spec.label_names),
            max_edit_fraction=gen.max_edit_fraction,
            max_input_chars=gen.max_input_chars if gen.strategy == "rewrite" else None,
            shown_paragraphs=gen.shown_paragraphs if gen.strategy == "rewrite" else None,
            edit_side=gen.edit_side,
            pair_names=spec.pair_names,
            # Flips ranked by fluency after edit size; the LM loads in this actor on its
            # first flip (only flips and their originals are scored).
            fluency_model=verifier.get("fluency_dir"),
            min_fluency_delta=getattr(gen, "min_fluency_delta", None),
        ),
        batch_size=64,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=1),  # one actor: one model copy
        # teacher.num_gpus: the verifier's classifier runs on the GPU Ray assigns it.
        num_cpus=float(verifier.get("teacher_num_cpus", 1.0)),
        num_gpus=float(verifier.get("teacher_num_gpus") or 0.0),
    )
    results = ds.take_all()
    if len(results) != expected:
        raise RuntimeError(f"generation round {rnd}: {len(results)} of {expected} rows came back")
    return results


def _kept(p: dict[str, Any]) -> dict[str, Any]:
    """The kept side of a sentence-pair item, as a row column (nothing for single texts)."""
    return {"kept": p["kept"]} if "kept" in p else {}


def rewrite_rounds(pending, spec, llm, gen, verifier, class_words=None):
    """The CoD paper's prompt: the LLM rewrites the text with a few words changed."""
    import ray

    from raydistill.pipelines.llm_stage import Sampling
    from raydistill.pipelines.swaps import opposite_style

    for rnd in range(1, gen.rounds + 1):
        if not pending:
            return
        rows = []
        for p in pending.values():
            tgt = spec.label_names[p["target"]]
            msgs = counterfactual_messages(
                spec,
                p["text"],
                spec.label_names[p["source_label"]],
                tgt,
                previous=p["previous"] or None,
                max_chars=gen.max_input_chars,
                kept=p.get("kept"),
                edit_side=gen.edit_side,
                # Binary sentiment keeps its prompt; other tasks get the target's words.
                target_words=None if opposite_style(spec) else (class_words or {}).get(tgt),
                paragraphs=gen.shown_paragraphs,
            )
            rows.append(
                {
                    "id": p["id"],
                    "text": p["text"],
                    "target": p["target"],
                    "messages": msgs,
                    **_kept(p),
                }
            )
        sampling = Sampling(
            n=gen.num_candidates,
            temperature=gen.temperature,
            top_p=gen.top_p,
            max_tokens=gen.max_new_tokens,
            seed=gen.seed + rnd,
        )
        answered = llm.chat(rows, sampling)
        for a in answered:
            a.pop("messages", None)  # the verifier needs the answers, not the prompts
        results = _verify(ray.data.from_items(answered), verifier, len(rows), rnd)
        for r in results:
            r["num_asked"] = gen.num_candidates
        yield rnd, results


def swap_rounds(pending, spec, llm, gen, verifier, class_words=None):
    """Teacher-guided swaps (`pipelines/swaps.py`): round r asks for replacements of the
    top `swap_words[r-1]` salient words (reusing earlier answers) and verifies single and
    joint swaps."""
    import ray

    from raydistill.pipelines.counterfactual_checks import check_replacement
    from raydistill.pipelines.llm_stage import Sampling
    from raydistill.pipelines.swaps import (
        SWAP_MAX_TOKENS,
        Saliency,
        swap_candidates,
        swap_messages,
        word_spans,
    )

    most = max(gen.swap_words)
    seeds = [
        {"id": p["id"], "text": p["text"], "source_label": p["source_label"], **_kept(p)}
        for p in pending.values()
    ]
    ranked_rows = (
        ray.data.from_items(seeds)
        .map_batches(
            Saliency,
            fn_constructor_kwargs=dict(
                teacher_dir=verifier["teacher_dir"],
                max_length=verifier["teacher_max_length"],
                top=most,
                edit_side=gen.edit_side,
            ),
            batch_size=16,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=1),  # one actor: one model copy
            num_cpus=float(verifier.get("teacher_num_cpus", 1.0)),
            num_gpus=float(verifier.get("teacher_num_gpus") or 0.0),
        )
        .take_all()
    )
    info: dict[str, dict[str, Any]] = {}
    for r in ranked_rows:
        text = pending[r["id"]]["text"]
        info[r["id"]] = {
            "spans": word_spans(text),
            "ranked": [int(i) for i in r["ranked"]],
            "replacements": {},
            "refused": Counter(),  # replies refused, by reason (check_replacement)
            "asked": set(),
        }
    for rnd in range(1, gen.rounds + 1):
        if not pending:
            return
        m = gen.swap_words[min(rnd, len(gen.swap_words)) - 1]
        ask = []
        asked_now: dict[str, int] = {}
        for pid in pending:
            inf = info[pid]
            p = pending[pid]
            for i in inf["ranked"][:m]:
                if i in inf["asked"]:
                    continue
                inf["asked"].add(i)
                asked_now[pid] = asked_now.get(pid, 0) + gen.num_candidates
                s, e = inf["spans"][i]
                word = p["text"][s:e]
                ask.append(
                    {
                        "id": f"{pid}\t{i}",
                        "messages": swap_messages(
                            spec,
                            word,
                            p["source_label"],
                            p["target"],
                            class_words=class_words,
                            edit_side=gen.edit_side,
                        ),
                    }
                )
        sampling = Sampling(
            n=gen.num_candidates,
            temperature=gen.temperature,
            top_p=gen.top_p,
            max_tokens=SWAP_MAX_TOKENS,
            seed=gen.seed + rnd,
        )
        tokens: dict[str, int] = {}
        errors: dict[str, int] = {}
        if ask:
            answered = llm.chat(ask, sampling)
            for a in answered:
                pid, idx = a["id"].split("\t")
                inf, idx = info[pid], int(idx)
                s, e = inf["spans"][idx]
                word = pending[pid]["text"][s:e]
                tokens[pid] = tokens.get(pid, 0) + int(a.get("generated_tokens") or 0)
                if a["llm_error"]:
                    errors[pid] = errors.get(pid, 0) + 1
                reps = []
                for raw in list(a["candidates"]):
                    rep, why = check_replacement(raw, word=word, label_names=spec.label_names)
                    if rep is None:
                        inf["refused"][why] += 1
                    elif rep.lower() != word.lower() and rep not in reps:
                        reps.append(rep)
                inf["replacements"][idx] = reps
        rows = []
        for pid, p in pending.items():
            inf = info[pid]
            cands = swap_candidates(
                p["text"],
                inf["spans"],
                inf["ranked"][:m],
                inf["replacements"],
                gen.num_candidates,
            )
            rows.append(
                {
                    "id": pid,
                    "text": p["text"],
                    "target": p["target"],
                    "candidates": cands,
                    "llm_error": "llm_error" if errors.get(pid) else "",
                    "generated_tokens": tokens.get(pid, 0),
                    "refused": json.dumps(dict(inf["refused"])),
                    "num_asked": asked_now.get(pid, 0),
                    **_kept(p),
                }
            )
            inf["refused"] = Counter()
        results = _verify(ray.data.from_items(rows), verifier, len(rows), rnd)
        for r in results:
            rej = json.loads(r["rejects"])
            for why, count in json.loads(r["refused"]).items():
                rej[why] = rej.get(why, 0) + int(count)
            r["rejects"] = json.dumps(rej)
        yield rnd, results
