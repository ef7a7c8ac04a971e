"""Encoder-decoder students (T5-style): a task prefix and the source in, the target out.

The prompt comes from `prompt_format` ("summarize: {source}", "predict: {question}
choices: ..."), targets are tokenized as labels (padding → -100) and the model's own
shifted cross-entropy is the loss. Prediction is greedy decoding with `max_new_tokens`,
which also caps the training targets, so the student is never taught a longer output
than it is allowed to generate. KD terms do not apply here: sequence-level distillation
comes in through the targets (teacher-written rows); α is ignored.
"""

from __future__ import annotations

import torch

from raydistill.training.student_kinds import GenerativeKind, cut_to_used, length_sorted_batches


class Seq2SeqKind(GenerativeKind):
    name = "seq2seq"
    auto_class = "AutoModelForSeq2SeqLM"

    def build(self, job):
        model = super().build(job)
        if model.config.decoder_start_token_id is None:
            # T5 starts decoding from the pad token; configs that say nothing get that.
            model.config.decoder_start_token_id = model.config.pad_token_id
        return model

    def encode(self, tokenizer, rows: list[dict], max_length: int) -> dict[str, torch.Tensor]:
        pairs = self.pairs(rows)
        enc = tokenizer(
            [p for p, _ in pairs],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        lab = tokenizer(
            text_target=[t for _, t in pairs],
            truncation=True,
            max_length=self.settings.max_new_tokens,
            padding=True,
            return_tensors="pt",
        )
        labels = lab["input_ids"].masked_fill(lab["attention_mask"] == 0, -100)
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": labels,
        }

    def batch(self, data, idx):
        b = cut_to_used({k: v[idx] for k, v in data.items()}, "attention_mask", exclude=("labels",))
        used = (b["labels"] != -100).any(dim=0).nonzero()
        if len(used):
            b["labels"] = b["labels"][:, : int(used.max()) + 1].contiguous()
        return b

    def loss(self, model, batch):
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        )
        v = float(out.loss.detach())
        return out.loss, {"ce": v, "loss": v}

    def generate(self, model, tokenizer, prompts: list[str], stop: str | None = None) -> list[str]:
        dev = next(model.parameters()).device
        out = [""] * len(prompts)
        for idx in length_sorted_batches([len(p) for p in prompts], self.gen_batch):
            enc = tokenizer(
                [prompts[i] for i in idx],
                truncation=True,
                max_length=self.settings.max_length,
                padding=True,
                return_tensors="pt",
            )
            gen = model.generate(
                input_ids=enc["input_ids"].to(dev),
                attention_mask=enc["attention_mask"].to(dev),
                max_new_tokens=self.settings.max_new_tokens,
                do_sample=False,
                num_beams=1,
                **({"stop_strings": [stop], "tokenizer": tokenizer} if stop else {}),
            )
            for i, text in zip(
                idx, tokenizer.batch_decode(gen, skip_special_tokens=True), strict=True
            ):
                out[i] = text.strip()
        return out
