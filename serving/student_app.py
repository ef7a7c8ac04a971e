"""Serve distilled students over HTTP with Ray Serve: one hop from the proxy to the model.

Layers:

* Plain Python students, one per kind, each with a batched `run(inputs)`:
  `StudentClassifier` (student_model.py), `StudentTagger` and `StudentGenerator`
  (student_kinds.py). No Ray; unit-testable and reusable in batch jobs.
* `StudentAPI` — the Serve deployment that is both the FastAPI ingress (routes in
  student_routes.py: validation, limits, auth, errors) and the model host: it keeps up to
  `MAX_MODELS_PER_REPLICA` students loaded (`@serve.multiplexed`, LRU), merges the inputs
  of concurrent requests into one model call per model (`@serve.batch`), and autoscales.
* `ModelPool` — the same model host without HTTP, called through a handle: the shadow
  teacher (`ShadowTeacher`) that scores a fraction of classify requests in the background
  (see `raydistill.serving.metrics`).

Why the models live in the ingress replica: an earlier layout put them in a separate pool
deployment behind the ingress, so each request crossed two Serve hops (proxy → ingress →
pool). On a 2-core machine a hop costs about as much CPU as a 2-layer student's share of
a batched forward, the ingress ran with Serve's default of 5 in-flight requests (the proxy
held back and retried the rest with back-off, so throughput fell as concurrency rose), and
the pool's batches never filled. See benchmarks/results/serve_load_diagnosis.md.

Multiplexing: a request's model comes from its JSON body; a client that also sends the
header `serve_multiplexed_model_id: <model>` is routed by the proxy to a replica that
already holds that model. Batches are split per model inside the batch handler, so
requests without the header batch correctly too.

Entry points: `build_student_app(...)` returns a Serve Application, `serve_students(...)`
runs it, and `app_from_env(args)` is the import-path builder for Serve config files
(`import_path: raydistill.serving.student_app:app_from_env`, e.g. a KubeRay RayService).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from ray import serve

from .metrics import BatchStats, ShadowSampler, ShadowStats, labels_agree
from .request_inputs import input_blank, input_chars, input_encodable
from .student_kinds import (
    CLASSIFY,
    ENDPOINT_OF_KIND,
    GENERATIVE,
    TAG,
    input_fields,
    load_student,
    needs_object,
    read_meta,
)
from .student_model import StudentClassifier, read_labels  # noqa: F401  (re-exported)

logger = logging.getLogger("ray.serve")

# LRU cache size of the multiplexed models: checkpoints kept loaded per replica.
MAX_MODELS_PER_REPLICA = 8
TEACHER_ID = "teacher"
APP_NAME = "students"
API_KEY_ENV = "RAYDISTILL_API_KEY"


# --------------------------------------------------------------------------- model host


class _Failed:
    """One batch item's error: a failing model fails its own requests, not the batch's."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


# Kinds whose batched call runs on the replica's event loop rather than in a thread.
# A classifier or tagger forward is short (milliseconds), and handing it to a thread made
# the model thread and the request-intake threads fight over the GIL: requests trickled
# in one by one while a forward ran, so batches stayed at ~2 under 16 concurrent clients
# (diagnosis: ~2-3 in a thread, ~5-7 inline under the same load). Inline, requests queue
# up during the forward and the next batch takes them all. Generation runs for seconds,
# so it stays in a thread and the replica keeps answering meanwhile.
INLINE_KINDS = (CLASSIFY, TAG)


class _ModelHost:
    """Students by name, loaded on first use (LRU), run in merged batches.

    The batch queue holds (model name, input) items from every concurrent request; the
    handler groups them per model, so one model call (one tokenizer call, one forward)
    serves all the requests of that model in the batch (see INLINE_KINDS for where the
    call runs).
    """

    def _setup_host(
        self,
        models: Mapping[str, str],
        *,
        max_length: int,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        torch_threads: int,
    ) -> None:
        import torch
        import transformers  # noqa: F401  (pay the slow import at start-up, not per request)

        # One intra-op thread per reserved CPU: more threads than cores on a shared
        # machine only adds contention with the proxy and the other replicas.
        torch.set_num_threads(max(1, int(torch_threads)))
        self._paths = dict(models)
        self._max_length = int(max_length)
        self._meta: dict[str, dict[str, Any]] = {}
        for name, path in self._paths.items():
            try:
                self._meta[name] = read_meta(path)
            except Exception:  # unreadable here: a classifier until loading says otherwise
                logger.exception("could not read the student metadata of %r at %s", name, path)
                self._meta[name] = {"kind": CLASSIFY, "unreadable": True}
        self.batch_stats = BatchStats()
        self._batch.set_max_batch_size(int(max_batch_size))
        self._batch.set_batch_wait_timeout_s(float(batch_wait_timeout_s))

    @serve.multiplexed(max_num_models_per_replica=MAX_MODELS_PER_REPLICA)
    async def get_model(self, model_id: str):
        if model_id not in self._paths:
            raise KeyError(f"unknown model {model_id!r}; served: {sorted(self._paths)}")
        path = self._paths[model_id]
        logger.info("loading model %r from %s", model_id, path)
        return await asyncio.to_thread(load_student, path, self._max_length)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batch(self, items: list[tuple[str, Any]]) -> list[Any]:
        groups: dict[str, list[int]] = {}
        for i, (name, _) in enumerate(items):
            groups.setdefault(name, []).append(i)
        out: list[Any] = [None] * len(items)
        for name, idx in groups.items():
            try:
                model = await self.get_model(name)
                inputs = [items[i][1] for i in idx]
                t0 = time.perf_counter()
                if model.kind in INLINE_KINDS:
                    results = model.run(inputs)
                else:
                    results = await asyncio.to_thread(model.run, inputs)
                self.batch_stats.record(name, len(idx), time.perf_counter() - t0)
                for i, r in zip(idx, results, strict=True):
                    out[i] = r
            except Exception as e:
                for i in idx:
                    out[i] = _Failed(e)
        return out

    async def run(self, model: str, inputs: list[Any]) -> list[Any]:
        """One request's inputs, each joining the replica's batches; results in order."""
        results = await asyncio.gather(*(self._batch((model, x)) for x in inputs))
        for r in results:
            if isinstance(r, _Failed):
                raise r.error
        return list(results)

    def describe(self) -> dict[str, list[str] | None]:
        """Label names per model (classifiers and taggers; None for generators)."""
        out: dict[str, list[str] | None] = {}
        for name, path in self._paths.items():
            if self._meta[name]["kind"] in GENERATIVE:
                out[name] = None
                continue
            try:
                out[name] = read_labels(path)
            except Exception:  # a folder this replica cannot read
                out[name] = None
        return out


@serve.deployment(name="ModelPool")
class ModelPool(_ModelHost):
    """Students behind a handle (`run.remote(model, inputs)`): the shadow teacher."""

    def __init__(
        self,
        models: dict[str, str],
        max_length: int = 128,
        max_batch_size: int = 32,
        batch_wait_timeout_s: float = 0.005,
        torch_threads: int = 1,
    ):
        self._setup_host(
            models,
            max_length=max_length,
            max_batch_size=max_batch_size,
            batch_wait_timeout_s=batch_wait_timeout_s,
            torch_threads=torch_threads,
        )


# Kept for callers of the old name (the pool deployment of earlier versions).
ClassifierPool = ModelPool


# --------------------------------------------------------------------------- HTTP ingress


def _serve_unavailable() -> tuple[type[BaseException], ...]:
    try:
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        return (BackPressureError, DeploymentUnavailableError)
    except ImportError:  # older Ray
        return ()


_SERVE_UNAVAILABLE = _serve_unavailable()


@serve.deployment(name="StudentAPI")
@serve.ingress()
class StudentAPI(_ModelHost):
    """HTTP front door and model host: limits, auth, routing by model name and kind,
    batched model calls, shadow traffic.

    Shadow counts and batch stats live in each replica (`GET /v1/shadow`, `GET /v1/stats`
    answer for the replica that serves them); the Ray metrics aggregate across replicas.
    """

    def __init__(
        self,
        models: dict[str, str],
        teacher=None,
        *,
        api_key: str | None = None,
        max_inputs: int = 64,
        max_chars: int = 2000,
        shadow_fraction: float = 0.0,
        max_length: int = 128,
        max_batch_size: int = 32,
        batch_wait_timeout_s: float = 0.005,
        torch_threads: int = 1,
    ):
        self._setup_host(
            models,
            max_length=max_length,
            max_batch_size=max_batch_size,
            batch_wait_timeout_s=batch_wait_timeout_s,
            torch_threads=torch_threads,
        )
        self.teacher = teacher
        self.model_names = list(models)
        self.api_key = api_key or None
        self.max_inputs = int(max_inputs)
        self.max_chars = int(max_chars)
        # JSON can spend up to 6 bytes per character (\uXXXX escapes) plus framing.
        self.max_body_bytes = self.max_inputs * (6 * self.max_chars + 8) + 65536
        fraction = float(shadow_fraction) if teacher is not None else 0.0
        self.sampler = ShadowSampler(fraction)
        self.stats = ShadowStats(teacher=TEACHER_ID if teacher is not None else None)
        self.stats.fraction = fraction
        self._labels: dict[str, list[str] | None] | None = None
        self._tasks: set[asyncio.Task] = set()
        try:
            self.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:
            self.replica_id = None

    def __serve_build_asgi_app__(self):
        from .student_routes import build_fastapi

        return build_fastapi(self)

    # ------------------------------------------------------------------ requests

    def kind_of(self, model: str) -> str | None:
        meta = self._meta.get(model)
        return meta["kind"] if meta else None

    def names_by_endpoint(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"classify": [], "tag": [], "generate": []}
        for name in self.model_names:
            out[ENDPOINT_OF_KIND[self.kind_of(name)]].append(name)
        return out

    def describe_models(self) -> list[dict[str, Any]]:
        if self._labels is None:
            self._labels = self.describe()
        out = []
        for name in self.model_names:
            meta = self._meta[name]
            kind = meta["kind"]
            row: dict[str, Any] = {
                "name": name,
                "kind": kind,
                "endpoint": f"/v1/{ENDPOINT_OF_KIND[kind]}",
                "labels": self._labels.get(name),
                "task_kind": meta.get("task_kind"),
            }
            if kind in GENERATIVE:
                fmt = str(meta.get("prompt_format") or "{text}")
                row["prompt_format"] = fmt
                row["fields"] = input_fields(fmt)
                row["max_new_tokens"] = meta.get("max_new_tokens")
            out.append(row)
        return out

    def check_request(self, endpoint: str, model: str, inputs: list[Any]) -> None:
        """Raise the HTTP error for a request this replica will not run (404/413/422)."""
        from fastapi import HTTPException

        from .student_routes import kind_error

        kind = self.kind_of(model)
        if kind is None or ENDPOINT_OF_KIND[kind] != endpoint:
            raise kind_error(endpoint, model, kind, self.model_names)
        if len(inputs) > self.max_inputs:
            raise HTTPException(
                status_code=413,
                detail=f"{len(inputs)} inputs in one request; the limit is "
                f"{self.max_inputs} inputs per request",
            )
        fmt = str(self._meta[model].get("prompt_format") or "{text}")
        for i, item in enumerate(inputs):
            n = input_chars(item)
            if n > self.max_chars:
                raise HTTPException(
                    status_code=413,
                    detail=f"inputs[{i}] has {n} characters; the limit is "
                    f"{self.max_chars} characters per input",
                )
            if not input_encodable(item):
                # JSON may carry lone surrogates ("\ud800"); tokenizers cannot take them.
                raise HTTPException(
                    status_code=422,
                    detail=f"inputs[{i}] is not valid Unicode text (a lone surrogate?)",
                )
            if endpoint == "classify":
                continue  # an empty text is a valid (if uninformative) thing to classify
            if isinstance(item, str):
                if not item.strip():
                    raise HTTPException(
                        status_code=422, detail=f"inputs[{i}] is empty; send text to {endpoint}"
                    )
                if endpoint == "generate" and needs_object(fmt):
                    raise HTTPException(
                        status_code=422,
                        detail=f"inputs[{i}] is a string, but model {model!r} has the prompt "
                        f"format {fmt!r}: send an object with the fields {input_fields(fmt)}",
                    )
                continue
            missing = [f for f in input_fields(fmt) if input_blank(item.get(f))]
            if missing:
                raise HTTPException(
                    status_code=422,
                    detail=f"inputs[{i}] lacks non-empty field(s) {missing} of the prompt "
                    f"format {fmt!r} of model {model!r}",
                )

    # ------------------------------------------------------------------ shadow

    def maybe_shadow(self, model: str, texts: list[str], student: list[dict]) -> None:
        if self.teacher is None or not self.sampler.take():
            return
        task = asyncio.get_running_loop().create_task(self._shadow(model, texts, student))
        self._tasks.add(task)  # keep a reference until done
        task.add_done_callback(self._tasks.discard)

    async def _shadow(self, model: str, texts: list[str], student: list[dict]) -> None:
        try:
            teacher = await self.teacher.options(multiplexed_model_id=TEACHER_ID).run.remote(
                TEACHER_ID, texts
            )
            same_names = bool(student) and set(student[0]["probs"]) == set(teacher[0]["probs"])
            agreed = sum(
                labels_agree(s, t, same_names) for s, t in zip(student, teacher, strict=True)
            )
            self.stats.record(model, len(texts), agreed)
        except Exception:
            logger.exception("shadow scoring by the teacher failed")
            self.stats.record_error(model)


# --------------------------------------------------------------------------- builders


def _resolve(path_or_name: str) -> str:
    from raydistill.registry import resolve_model

    return resolve_model(str(path_or_name))


def build_student_app(
    models: Mapping[str, str],
    *,
    teacher: str | None = None,
    shadow_fraction: float = 0.0,
    api_key: str | None = None,
    max_inputs: int = 64,
    max_chars: int = 2000,
    min_replicas: int = 1,
    max_replicas: int = 1,
    max_batch_size: int = 32,
    batch_wait_timeout_s: float = 0.005,
    target_ongoing_requests: float = 8.0,
    max_ongoing_requests: int | None = None,
    upscale_delay_s: float | None = None,
    downscale_delay_s: float | None = None,
    max_length: int = 128,
    num_cpus_per_replica: float = 1.0,
    num_gpus_per_replica: float = 0.0,
):
    """A Serve Application serving `models` ({name: folder or registry name}).

    The StudentAPI deployment (ingress + models) autoscales between `min_replicas` and
    `max_replicas` aiming at `target_ongoing_requests` per replica (Serve's default
    up/downscale delays unless given). `max_ongoing_requests` (default: 4 × max_batch_size,
    at least 64) must exceed the concurrency one replica should batch over: below it, the
    proxy holds requests back and retries them with back-off instead of letting them
    join a batch. With `teacher` set and `shadow_fraction` > 0, that fraction of classify
    requests is also scored by the teacher in the background.
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty {name: checkpoint folder} mapping")
    for name in models:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"model names must be non-empty strings, got {name!r}")
    if not 0.0 <= float(shadow_fraction) <= 1.0:
        raise ValueError(f"shadow_fraction must be in [0, 1], got {shadow_fraction}")
    if shadow_fraction > 0 and not teacher:
        raise ValueError("shadow_fraction > 0 needs a teacher checkpoint")
    if int(max_inputs) < 1 or int(max_chars) < 1:
        raise ValueError("max_inputs and max_chars must be >= 1")
    if not 0 <= int(min_replicas) <= int(max_replicas) or int(max_replicas) < 1:
        raise ValueError(
            f"need 0 <= min_replicas <= max_replicas and max_replicas >= 1, "
            f"got {min_replicas}..{max_replicas}"
        )
    if int(max_batch_size) < 1 or float(batch_wait_timeout_s) < 0:
        raise ValueError("need max_batch_size >= 1 and batch_wait_timeout_s >= 0")
    ongoing = int(max_ongoing_requests or max(64, 4 * int(max_batch_size)))
    if ongoing < int(max_batch_size):
        raise ValueError(f"max_ongoing_requests={ongoing} is below max_batch_size")

    paths = {str(n): _resolve(p) for n, p in models.items()}
    autoscaling: dict[str, Any] = {
        "min_replicas": int(min_replicas),
        "max_replicas": int(max_replicas),
        "target_ongoing_requests": float(target_ongoing_requests),
    }
    if upscale_delay_s is not None:
        autoscaling["upscale_delay_s"] = float(upscale_delay_s)
    if downscale_delay_s is not None:
        autoscaling["downscale_delay_s"] = float(downscale_delay_s)
    actor_options = {
        "num_cpus": float(num_cpus_per_replica),
        "num_gpus": float(num_gpus_per_replica),
    }
    host = dict(
        max_length=max_length,
        max_batch_size=max_batch_size,
        batch_wait_timeout_s=batch_wait_timeout_s,
        torch_threads=max(1, round(float(num_cpus_per_replica))),
    )

    shadow_teacher = None
    if teacher and shadow_fraction > 0:
        shadow_teacher = ModelPool.options(
            name="ShadowTeacher",
            autoscaling_config=dict(autoscaling),
            max_ongoing_requests=ongoing,
            ray_actor_options=dict(actor_options),
        ).bind({TEACHER_ID: _resolve(teacher)}, **host)
    return StudentAPI.options(
        autoscaling_config=autoscaling,
        max_ongoing_requests=ongoing,
        ray_actor_options=actor_options,
    ).bind(
        paths,
        shadow_teacher,
        api_key=api_key,
        max_inputs=max_inputs,
        max_chars=max_chars,
        shadow_fraction=shadow_fraction,
        **host,
    )


def serve_students(
    models: Mapping[str, str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    blocking: bool = True,
    app_name: str = APP_NAME,
    route_prefix: str = "/",
    **kwargs: Any,
):
    """Run the student app on Serve's HTTP proxy at host:port (kwargs → build_student_app).

    Connects to the running Ray cluster (or starts a local one). With `blocking=True` this
    call serves until interrupted; otherwise it returns the app's DeploymentHandle.
    """
    import ray

    if not ray.is_initialized():
        ray.init()
    app = build_student_app(models, **kwargs)
    serve.start(http_options={"host": host, "port": int(port)})
    handle = serve.run(app, name=app_name, route_prefix=route_prefix, blocking=blocking)
    logger.info("serving %s at http://%s:%s%s", list(models), host, port, route_prefix)
    return handle


def _parse_models(value: Any) -> dict[str, str]:
    """{name: path}, a JSON object string, or "name=path,name2=path2"."""
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, str) and value.strip():
        text = value.strip()
        if text.startswith("{"):
            return {str(k): str(v) for k, v in json.loads(text).items()}
        out = {}
        for item in text.split(","):
            name, sep, path = item.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ValueError(f"bad models entry {item!r}; expected name=path")
            out[name.strip()] = path.strip()
        return out
    raise ValueError("no student models given: set args.models or $RAYDISTILL_STUDENT_MODELS")


def app_from_env(args: dict[str, Any] | None = None):
    """Application builder for Serve config files (`serve run`, RayService).

    `args` (from the config's `args:`) may hold `models` ({name: path} or "a=/p,b=/q"),
    `teacher`, `shadow_fraction` and any keyword of `build_student_app` except `api_key`.
    Missing values fall back to $RAYDISTILL_STUDENT_MODELS, $RAYDISTILL_TEACHER and
    $RAYDISTILL_SHADOW_FRACTION. The API key is read from the environment variable named by
    `args.api_key_env` (default $RAYDISTILL_API_KEY) so it never sits in the config;
    `require_api_key: true` makes a missing key an error.
    """
    args = dict(args or {})
    env = os.environ
    models = _parse_models(args.pop("models", None) or env.get("RAYDISTILL_STUDENT_MODELS"))
    teacher = args.pop("teacher", None) or env.get("RAYDISTILL_TEACHER") or None
    fraction = args.pop("shadow_fraction", None)
    if fraction is None:
        fraction = env.get("RAYDISTILL_SHADOW_FRACTION", 0.0)
    key_env = str(args.pop("api_key_env", API_KEY_ENV))
    require_key = str(args.pop("require_api_key", False)).lower() in ("1", "true", "yes")
    if "api_key" in args:
        raise ValueError(f"put the API key in ${key_env}, not in the Serve config args")
    api_key = env.get(key_env) or None
    if require_key and not api_key:
        raise ValueError(f"require_api_key is set but ${key_env} is empty")

    casts = {
        "max_inputs": int,
        "max_chars": int,
        "min_replicas": int,
        "max_replicas": int,
        "max_batch_size": int,
        "max_length": int,
        "batch_wait_timeout_s": float,
        "target_ongoing_requests": float,
        "max_ongoing_requests": int,
        "upscale_delay_s": float,
        "downscale_delay_s": float,
        "num_cpus_per_replica": float,
        "num_gpus_per_replica": float,
    }
    unknown = sorted(set(args) - set(casts))
    if unknown:
        raise ValueError(f"unknown student app args {unknown}; known: {sorted(casts)}")
    kwargs = {k: casts[k](v) for k, v in args.items()}
    return build_student_app(
        models,
        teacher=teacher,
        shadow_fraction=float(fraction),
        api_key=api_key,
        **kwargs,
    )
