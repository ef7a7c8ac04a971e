"""Decoder-only students: prompt + completion in one sequence, loss on the completion only.

Training sequences are `prompt ids + " " + target ids + eos` with the prompt's positions
labelled -100, so the student learns to continue a prompt rather than to reproduce it.
Training and generation both left-pad, with position ids counted from each row's first
real token (what `generate` does), so a row sees the same positions in both. Left padding
also puts every target at the right edge: the vocabulary projection — most of a small
LM's compute — is then applied only to the last positions (`logits_to_keep`), not to the
prompt, which for summarization is nine tenths of the tokens. Generation decodes greedily
for `max_new_tokens`. A prompt longer than
its budget (`max_length − max_new_tokens − 1`) loses the end of its main text but keeps
the prompt's closing cue ("TL;DR:", "answer:"), which tells the model what to write; the
same cut is applied in training and at prediction. α is ignored (as for seq2seq).
"""

from __future__ import annotations

import torch

from raydistill.training.student_kinds import GenerativeKind, length_sorted_batches


def left_pad(seqs: list[list[int]], value: int):
    """(tensor of `seqs` left-padded with `value`, attention mask)."""
    width = max(map(len, seqs))
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        if s:
            out[b, width - len(s) :] = torch.tensor(s)
            mask[b, width - len(s) :] = 1
    return out, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted from each row's first real token, as `generate` counts them."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def accepts(model, arg: str) -> bool:
    import inspect

    module = getattr(model, "module", model)  # a DeepSpeed engine wraps the HF model
    return arg in inspect.signature(module.forward).parameters


class CausalLMKind(GenerativeKind):
    name = "causal_lm"
    auto_class = "AutoModelForCausalLM"

    def tokenizer(self, source: str):
        tok = super().tokenizer(source)
        tok.padding_side = "left"  # saved with the folder: what generation needs
        return tok

    def _eos(self, tok) -> int:
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        if eos is None:
            raise ValueError("a causal_lm student's tokenizer needs an eos (or sep) token")
        return int(eos)

    def _budget(self) -> int:
        s = self.settings
        budget = s.max_length - s.max_new_tokens - 1
        if budget < 8:
            raise ValueError(
                f"max_length={s.max_length} leaves {budget} prompt tokens after "
                f"max_new_tokens={s.max_new_tokens}: raise max_length"
            )
        return budget

    def _prompt_ids(self, tok, prompt: str) -> list[int]:
        bos = tok.bos_token_id
        adds_bos = bos is not None and tok("a")["input_ids"][:1] == [bos]
        ids = ([bos] if adds_bos else []) + tok(prompt, add_special_tokens=False)["input_ids"]
        budget = self._budget()
        if len(ids) <= budget:
            return ids
        cue = self.settings.prompt_format.rsplit("}", 1)[-1]
        tail = tok(cue, add_special_tokens=False)["input_ids"] if cue.strip() else []
        return ids[: budget - len(tail)] + tail

    def encode(self, tokenizer, rows: list[dict], max_length: int) -> dict[str, torch.Tensor]:
        eos, pad = self._eos(tokenizer), int(tokenizer.pad_token_id)
        seqs, labs = [], []
        for prompt, target in self.pairs(rows):
            p = self._prompt_ids(tokenizer, prompt)
            t = tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"]
            t = t[: self.settings.max_new_tokens] + [eos]
            seqs.append(p + t)
            labs.append([-100] * len(p) + t)
        ids, mask = left_pad(seqs, pad)
        labels, _ = left_pad(labs, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def loss(self, model, batch):
        import torch.nn.functional as F

        labels, mask = batch["labels"], batch["attention_mask"]
        # Targets sit at the right edge; logits at position j predict token j+1.
        n_target = int((labels != -100).any(dim=0).flip(0).long().cumprod(0).sum())
        kwargs = {}
        if accepts(model, "logits_to_keep"):
            kwargs["logits_to_keep"] = n_target + 1
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=mask,
            position_ids=positions(mask),
            **kwargs,
        ).logits[:, -(n_target + 1) : -1]
        ce = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            labels[:, -n_target:].reshape(-1),
            ignore_index=-100,
        )
        v = float(ce.detach())
        return ce, {"ce": v, "loss": v}

    def generate(self, model, tokenizer, prompts: list[str], stop: str | None = None) -> list[str]:
        dev = next(model.parameters()).device
        eos, pad = self._eos(tokenizer), int(tokenizer.pad_token_id)
        ids = [self._prompt_ids(tokenizer, p) for p in prompts]
        out = [""] * len(prompts)
        for idx in length_sorted_batches([len(x) for x in ids], self.gen_batch):
            x, m = left_pad([ids[i] for i in idx], pad)
            width = x.shape[1]
            gen = model.generate(
                input_ids=x.to(dev),
                attention_mask=m.to(dev),
                max_new_tokens=self.settings.max_new_tokens,
                do_sample=False,
                num_beams=1,
                **({"stop_strings": [stop], "tokenizer": tokenizer} if stop else {}),
                pad_token_id=pad,
                eos_token_id=eos,
            )
            texts = tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
            for i, text in zip(idx, texts, strict=True):
                out[i] = text.strip()
        return out

    def save(self, model, out_dir, tokenizer) -> None:
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        super().save(model, out_dir, tokenizer)
