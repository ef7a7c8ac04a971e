"""An OpenAI-compatible chat server on plain transformers `generate`, as a Ray Serve app.

The `hf` backend of the teacher pool: it serves models vLLM cannot load and works on
installs without vLLM. The generation logic lives in `HFChatEngine`, a plain class that is
testable without Ray; `HFChatDeployment` wraps it in a Serve deployment with a FastAPI
ingress (`POST /v1/chat/completions`, `GET /v1/models`) and `@serve.batch` for dynamic
batching. A dynamic batch may hold requests with different sampling parameters; it is
split into groups with identical parameters and each group is one `generate` call, so no
request is ever sampled with another request's settings.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray import serve

logger = logging.getLogger(__name__)

# Upper bounds that keep one malformed request from hogging a CPU replica.
MAX_N = 32
MAX_NEW_TOKENS = 4096


class HFChatEngine:
    """Batched chat generation with transformers on one process (CPU or one GPU).

    `generate` takes a list of conversations (each a list of `{"role", "content"}`
    dicts) and returns, per conversation, `n` pairs `(text, num_generated_tokens)`.
    Prompts are rendered with the tokenizer's chat template and left-padded so the whole
    list is one `generate` call; `temperature == 0` means greedy decoding (the `n`
    sequences are then identical).
    """

    def __init__(
        self,
        model_dir: str,
        *,
        dtype: str = "float32",
        device: str | None = None,
        num_threads: int | None = None,
        device_map: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = getattr(torch, dtype) if dtype != "auto" else "auto"
        if device_map:
            # accelerate places the layers; inputs go to where the embeddings live.
            self.model = AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=torch_dtype, device_map=device_map, use_safetensors=True
            )
            self.device = str(self.model.get_input_embeddings().weight.device)
            self.model.eval()
        else:
            self.model = AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=torch_dtype, use_safetensors=True
            )
            self.model.to(self.device).eval()
        self.model_dir = model_dir
        gen_cfg = self.model.generation_config
        eos = gen_cfg.eos_token_id if gen_cfg.eos_token_id is not None else []
        eos = [eos] if isinstance(eos, int) else list(eos)
        if self.tokenizer.eos_token_id is not None:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_ids = sorted(set(eos))
        self.max_positions = int(
            getattr(self.model.config, "max_position_embeddings", 0) or 1_000_000
        )
        self._lock = threading.Lock()  # torch generate is not re-entrant on one model

    # ------------------------------------------------------------------ prompts

    def render(self, messages: list[dict[str, str]]) -> str:
        """One conversation → the prompt string (chat template, generation prompt on)."""
        msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=True
            )
        # No template (a base model): a plain transcript ending with the assistant's turn.
        lines = [f"{m['role']}: {m['content']}" for m in msgs]
        return "\n".join(lines) + "\nassistant:"

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"])

    # --------------------------------------------------------------- generation

    def generate(
        self,
        conversations: list[list[dict[str, str]]],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 64,
        seed: int | None = None,
    ) -> list[list[tuple[str, int]]]:
        return self.generate_with_usage(conversations, n, temperature, top_p, max_tokens, seed)[0]

    def generate_with_usage(
        self,
        conversations: list[list[dict[str, str]]],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 64,
        seed: int | None = None,
    ) -> tuple[list[list[tuple[str, int]]], list[int]]:
        """Like `generate`, plus the prompt length (tokens) of each conversation."""
        import torch

        if not conversations:
            return [], []
        if n < 1 or max_tokens < 1:
            raise ValueError(f"n and max_tokens must be >= 1 (got n={n}, max_tokens={max_tokens})")
        prompts = [self.render(c) for c in conversations]
        # Keep prompt + new tokens inside the model's context: drop the oldest tokens.
        max_prompt = max(1, self.max_positions - max_tokens)
        enc = self.tokenizer(prompts, add_special_tokens=False)
        ids = [x[-max_prompt:] for x in enc["input_ids"]]
        prompt_lens = [len(x) for x in ids]
        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        width = batch["input_ids"].shape[1]

        sample = temperature > 0
        kwargs: dict[str, Any] = dict(
            max_new_tokens=int(max_tokens),
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.eos_ids or None,
        )
        if sample:
            # OpenAI semantics: only top_p truncates (top_k=0 turns top-k off).
            kwargs.update(
                do_sample=True,
                temperature=float(temperature),
                top_p=float(top_p),
                top_k=0,
                num_return_sequences=int(n),
            )
        else:
            # Greedy search refuses num_return_sequences > 1: decode once, repeat below.
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)

        with self._lock, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(int(seed))
            out = self.model.generate(**batch, **kwargs)
        new = out[:, width:].tolist()
        if not sample:
            new = [seq for seq in new for _ in range(n)]

        eos = set(self.eos_ids)
        results: list[list[tuple[str, int]]] = []
        for i in range(len(conversations)):
            choices = []
            for seq in new[i * n : (i + 1) * n]:
                stop = next((j for j, t in enumerate(seq) if t in eos), None)
                # The stop token counts as generated (as in vLLM's usage numbers).
                count = len(seq) if stop is None else stop + 1
                text_ids = seq if stop is None else seq[:stop]
                text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
                choices.append((text, count))
            results.append(choices)
        return results, prompt_lens


# ------------------------------------------------------------------ OpenAI schema


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str = Field(min_length=1)
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        # OpenAI "content parts": keep the text parts.
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    n: int = Field(default=1, ge=1, le=MAX_N)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    seed: int | None = None
    stream: bool = False

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, v: bool) -> bool:
        if v:
            raise ValueError("streaming is not supported by the hf backend")
        return v


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": kind, "code": status}},
    )


class _Item:
    """One request waiting in the dynamic batch."""

    __slots__ = ("messages", "params")

    def __init__(self, messages: list[dict[str, str]], params: tuple) -> None:
        self.messages = messages
        self.params = params  # (n, temperature, top_p, max_tokens, seed)


app = FastAPI(title="raydistill hf teacher")


@app.exception_handler(RequestValidationError)
async def _on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    parts = []
    for e in exc.errors():
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{where or 'body'}: {e.get('msg', 'invalid')}")
    return _error(400, "; ".join(parts) or "invalid request")


@serve.deployment
@serve.ingress(app)
class HFChatDeployment:
    """Ray Serve replica: FastAPI OpenAI chat endpoint over `HFChatEngine`."""

    def __init__(
        self,
        model_dir: str,
        served_model_name: str = "teacher",
        max_batch_size: int = 32,
        batch_wait_timeout_s: float = 0.05,
        default_max_tokens: int = 64,
        dtype: str = "float32",
        device_map: str | None = None,
    ) -> None:
        self.engine = HFChatEngine(model_dir, dtype=dtype, device_map=device_map)
        self.served_model_name = served_model_name
        self.default_max_tokens = default_max_tokens
        self.created = int(time.time())
        self._generate_batch.set_max_batch_size(max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.served_model_name,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "raydistill",
                    "root": self.engine.model_dir,
                }
            ],
        }

    @app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat_completions(self, req: ChatCompletionRequest) -> JSONResponse:
        if req.model not in (None, "", self.served_model_name):
            return _error(
                404,
                f"model {req.model!r} does not exist; this server serves "
                f"{self.served_model_name!r}",
                "not_found_error",
            )
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        max_tokens = req.max_completion_tokens or req.max_tokens or self.default_max_tokens
        params = (req.n, float(req.temperature), float(req.top_p), int(max_tokens), req.seed)
        try:
            choices, prompt_tokens = await self._generate_batch(_Item(messages, params))
        except Exception as e:  # a generation failure answers 500, the replica lives on
            logger.exception("generation failed")
            return _error(500, f"generation failed: {type(e).__name__}: {e}", "server_error")
        completion_tokens = sum(c for _t, c in choices)
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.served_model_name,
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "length" if count >= max_tokens else "stop",
                    }
                    for i, (text, count) in enumerate(choices)
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.05)
    async def _generate_batch(self, items: list[_Item]) -> list[tuple[list[tuple[str, int]], int]]:
        # Group by sampling parameters: one generate call per group, results in order.
        groups: OrderedDict[tuple, list[int]] = OrderedDict()
        for i, it in enumerate(items):
            groups.setdefault(it.params, []).append(i)
        out: list[Any] = [None] * len(items)
        for params, idx in groups.items():
            n, temperature, top_p, max_tokens, seed = params
            convs = [items[i].messages for i in idx]
            # Run torch in a thread so the replica keeps accepting requests meanwhile.
            results, prompt_lens = await asyncio.to_thread(
                self.engine.generate_with_usage, convs, n, temperature, top_p, max_tokens, seed
            )
            for i, res, plen in zip(idx, results, prompt_lens, strict=True):
                out[i] = (res, plen)
        return out


def build_hf_app(
    model_dir: str,
    *,
    served_model_name: str = "teacher",
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    min_replicas: int = 1,
    max_replicas: int = 1,
    max_batch_size: int = 32,
    batch_wait_timeout_s: float = 0.05,
    dtype: str = "float32",
    device_map: str | None = None,
) -> serve.Application:
    """The bound Serve application for the hf backend."""
    opts: dict[str, Any] = dict(
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        max_ongoing_requests=max(4 * max_batch_size, 16),
    )
    if min_replicas == max_replicas:
        opts["num_replicas"] = min_replicas
    else:
        opts["autoscaling_config"] = {
            "min_replicas": min_replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": max_batch_size,
        }
    return HFChatDeployment.options(**opts).bind(
        model_dir,
        served_model_name=served_model_name,
        max_batch_size=max_batch_size,
        batch_wait_timeout_s=batch_wait_timeout_s,
        dtype=dtype,
        device_map=resolve_device_map(device_map, num_gpus),
    )


def resolve_device_map(device_map: str | None, num_gpus: float) -> str | None:
    """What `from_pretrained(device_map=...)` gets for a replica with `num_gpus` GPUs.

    One GPU or none: None (the whole model moves to the replica's device, no accelerate
    needed). More than one: "auto" so a model too big for one card is sharded over the
    replica's GPUs. An explicit value wins but needs a GPU, since on CPU it only adds an
    accelerate dependency and hides where the weights went.
    """
    if device_map is None:
        return "auto" if num_gpus > 1 else None
    if num_gpus <= 0:
        raise ValueError(
            f"pool.device_map={device_map!r} needs pool.num_gpus >= 1 (got {num_gpus}); "
            "leave device_map unset on CPU"
        )
    return device_map
