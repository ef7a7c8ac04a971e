"""Serve distilled student classifiers over HTTP with Ray Serve.

Three layers:

* `StudentClassifier` — plain Python: load an HF sequence-classification folder and
  classify a list of texts. No Ray; unit-testable and reusable in batch jobs.
* `ClassifierPool` — a Serve deployment holding several checkpoints, selected per request
  by Serve model multiplexing (`@serve.multiplexed` + `serve.get_multiplexed_model_id`),
  with `@serve.batch` dynamic batching of single texts across concurrent requests and an
  autoscaling config. A second instance of it (`ShadowTeacher`) scores shadow traffic.
* `StudentAPI` — the FastAPI ingress: `POST /v1/classify`, `GET /v1/models`,
  `GET /v1/shadow`, `GET /healthz`, plus FastAPI's `/docs` and `/openapi.json`. It
  enforces request limits (413), validation (422), malformed JSON (400), unknown models
  (404) and an optional bearer API key (401), and samples a fraction of requests for the
  teacher in the background (shadow mode; see `raydistill.serving.metrics`).

Entry points: `build_student_app(...)` returns a Serve Application, `serve_students(...)`
runs it, and `app_from_env(args)` is the import-path builder for Serve config files
(`import_path: raydistill.serving.student_app:app_from_env`, e.g. a KubeRay RayService).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr
from ray import serve

from .metrics import ShadowSampler, ShadowStats, labels_agree
from .student_model import StudentClassifier, read_labels  # noqa: F401  (re-exported)

logger = logging.getLogger("ray.serve")

# LRU cache size of the multiplexed pool: checkpoints kept loaded per replica.
MAX_MODELS_PER_REPLICA = 8
TEACHER_ID = "teacher"
APP_NAME = "students"
API_KEY_ENV = "RAYDISTILL_API_KEY"


# --------------------------------------------------------------------------- model pool


@serve.deployment(name="ClassifierPool")
class ClassifierPool:
    """Several checkpoints behind one deployment, chosen by the multiplexed model id."""

    def __init__(
        self,
        models: dict[str, str],
        max_length: int = 128,
        max_batch_size: int = 32,
        batch_wait_timeout_s: float = 0.01,
    ):
        import transformers  # noqa: F401  (pay the slow import at start-up, not per request)

        self._paths = dict(models)
        self._max_length = int(max_length)
        self._classify_batch.set_max_batch_size(int(max_batch_size))
        self._classify_batch.set_batch_wait_timeout_s(float(batch_wait_timeout_s))

    @serve.multiplexed(max_num_models_per_replica=MAX_MODELS_PER_REPLICA)
    async def get_model(self, model_id: str) -> StudentClassifier:
        if model_id not in self._paths:
            raise KeyError(f"unknown model {model_id!r}; served: {sorted(self._paths)}")
        path = self._paths[model_id]
        logger.info("loading model %r from %s", model_id, path)
        return await asyncio.to_thread(StudentClassifier, path, self._max_length)

    async def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        """Classify one request's texts; each text joins the replica's dynamic batches."""
        return list(await asyncio.gather(*(self._classify_batch(t) for t in texts)))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _classify_batch(self, texts: list[str]) -> list[dict[str, Any]]:
        # Serve splits batches by multiplexed model id, so one batch = one model.
        model = await self.get_model(serve.get_multiplexed_model_id())
        return await asyncio.to_thread(model.classify, texts)

    def describe(self) -> dict[str, list[str] | None]:
        out: dict[str, list[str] | None] = {}
        for name, path in self._paths.items():
            try:
                out[name] = read_labels(path)
            except Exception:  # a folder this replica cannot read
                out[name] = None
        return out


# --------------------------------------------------------------------------- HTTP ingress


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "student", "inputs": ["a fine film"]}]}
    )
    model: StrictStr = Field(description="Served model name (see GET /v1/models).")
    inputs: list[StrictStr] = Field(
        min_length=1,
        description="Texts to classify (the server's limits: max_inputs per request, "
        "max_chars per text; 413 beyond them).",
    )


class Prediction(BaseModel):
    label: str
    label_id: int
    probs: dict[str, float]


class ClassifyResponse(BaseModel):
    model: str
    results: list[Prediction]


def _serve_unavailable() -> tuple[type[BaseException], ...]:
    try:
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        return (BackPressureError, DeploymentUnavailableError)
    except ImportError:  # older Ray
        return ()


_SERVE_UNAVAILABLE = _serve_unavailable()


def _build_fastapi(ingress: StudentAPI):
    """The FastAPI app of one ingress replica; routes close over its settings."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    app = FastAPI(
        title="raydistill students",
        description="Distilled student classifiers served with Ray Serve.",
        version="1",
    )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        bad_json = [e for e in errors if e.get("type") in ("json_invalid", "json_decode")]
        if bad_json:
            msg = bad_json[0].get("ctx", {}).get("error") or bad_json[0].get("msg")
            return JSONResponse(
                status_code=400,
                content={"detail": f"malformed JSON body: {msg}"},
            )
        ctype = request.headers.get("content-type", "")
        if "json" not in ctype and any(tuple(e.get("loc", ())) == ("body",) for e in errors):
            # FastAPI only decodes JSON bodies sent with a JSON content type.
            return JSONResponse(
                status_code=400,
                content={
                    "detail": "malformed JSON body: send a JSON object with "
                    f"Content-Type: application/json (got {ctype or 'no content type'!r})"
                },
            )
        return JSONResponse(
            status_code=422,
            content={"detail": jsonable_encoder(errors)},
        )

    @app.middleware("http")
    async def _body_limit(request: Request, call_next):
        # Reject oversized bodies before they are parsed.
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > ingress.max_body_bytes:
            return JSONResponse(
                status_code=413,
                content={
                    "detail": f"request body of {length} bytes exceeds the limit of "
                    f"{ingress.max_body_bytes} bytes (max_inputs={ingress.max_inputs}, "
                    f"max_chars={ingress.max_chars})"
                },
            )
        return await call_next(request)

    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")

    async def require_key(creds: HTTPAuthorizationCredentials | None = Depends(bearer)):
        if ingress.api_key is None:
            return
        ok = (
            creds is not None
            and creds.scheme.lower() == "bearer"
            and hmac.compare_digest(creds.credentials.encode(), ingress.api_key.encode())
        )
        if not ok:
            raise HTTPException(
                status_code=401,
                detail="missing or invalid API key (send Authorization: Bearer <key>)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    protected = [Depends(require_key)]

    @app.get("/healthz", tags=["ops"])
    async def healthz():
        return {"status": "ok", "models": ingress.model_names}

    @app.get("/v1/models", dependencies=protected, tags=["classify"])
    async def list_models():
        labels = await ingress.labels()
        return {
            "models": [{"name": n, "labels": labels.get(n)} for n in ingress.model_names],
            "shadow": {
                "enabled": ingress.teacher is not None,
                "fraction": ingress.stats.fraction,
            },
        }

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        dependencies=protected,
        tags=["classify"],
        description=f"Classify up to {ingress.max_inputs} texts of at most "
        f"{ingress.max_chars} characters each with the named model.",
        responses={
            400: {"description": "Malformed JSON body"},
            401: {"description": "Missing or wrong API key"},
            404: {"description": "Unknown model"},
            413: {"description": "Too many inputs or an input too long"},
            422: {"description": "Wrong types or missing fields"},
        },
    )
    async def classify(req: ClassifyRequest):
        ingress.check_request(req.model, req.inputs)
        try:
            results = await ingress.students.options(
                multiplexed_model_id=req.model
            ).classify.remote(req.inputs)
        except _SERVE_UNAVAILABLE:
            raise  # Serve answers these with 503 (overload / no replica yet)
        except Exception as e:
            logger.exception("classification failed for model %r", req.model)
            raise HTTPException(
                status_code=500,
                detail=f"classification failed: {type(e).__name__}",
            ) from e
        ingress.maybe_shadow(req.model, req.inputs, results)
        return {"model": req.model, "results": results}

    @app.get("/v1/shadow", dependencies=protected, tags=["ops"])
    async def shadow():
        # pending: shadow requests sent to the teacher whose answers are not counted yet.
        return {**ingress.stats.snapshot(), "pending": len(ingress._tasks)}

    return app


@serve.deployment(name="StudentAPI", ray_actor_options={"num_cpus": 0.1})
@serve.ingress()
class StudentAPI:
    """HTTP front door: validation, limits, auth, routing by model name, shadow traffic.

    Shadow counts live in this replica (keep the ingress at one replica for exact
    `GET /v1/shadow`); the Ray metrics aggregate across replicas either way.
    """

    def __init__(
        self,
        students,
        teacher=None,
        *,
        model_names: list[str],
        api_key: str | None = None,
        max_inputs: int = 64,
        max_chars: int = 2000,
        shadow_fraction: float = 0.0,
    ):
        self.students = students
        self.teacher = teacher
        self.model_names = list(model_names)
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

    def __serve_build_asgi_app__(self):
        return _build_fastapi(self)

    def check_request(self, model: str, inputs: list[str]) -> None:
        from fastapi import HTTPException

        if model not in self.model_names:
            raise HTTPException(
                status_code=404,
                detail=f"unknown model {model!r}; served models: {', '.join(self.model_names)}",
            )
        if len(inputs) > self.max_inputs:
            raise HTTPException(
                status_code=413,
                detail=f"{len(inputs)} inputs in one request; the limit is "
                f"{self.max_inputs} inputs per request",
            )
        for i, text in enumerate(inputs):
            if len(text) > self.max_chars:
                raise HTTPException(
                    status_code=413,
                    detail=f"inputs[{i}] has {len(text)} characters; the limit is "
                    f"{self.max_chars} characters per input",
                )

    async def labels(self) -> dict[str, list[str] | None]:
        if self._labels is None:
            try:
                self._labels = await self.students.describe.remote()
            except Exception:
                logger.exception("could not read label names")
                return {}
        return self._labels

    def maybe_shadow(self, model: str, texts: list[str], student: list[dict]) -> None:
        if self.teacher is None or not self.sampler.take():
            return
        task = asyncio.get_running_loop().create_task(self._shadow(model, texts, student))
        self._tasks.add(task)  # keep a reference until done
        task.add_done_callback(self._tasks.discard)

    async def _shadow(self, model: str, texts: list[str], student: list[dict]) -> None:
        try:
            teacher = await self.teacher.options(multiplexed_model_id=TEACHER_ID).classify.remote(
                texts
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
    batch_wait_timeout_s: float = 0.01,
    target_ongoing_requests: float = 4.0,
    max_length: int = 128,
    num_cpus_per_replica: float = 1.0,
    num_gpus_per_replica: float = 0.0,
):
    """A Serve Application serving `models` ({name: folder or registry name}).

    The pool deployment autoscales between `min_replicas` and `max_replicas` aiming at
    `target_ongoing_requests` per replica. With `teacher` set and `shadow_fraction` > 0,
    that fraction of requests is also scored by the teacher in the background.
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

    paths = {str(n): _resolve(p) for n, p in models.items()}

    def pool(name: str, checkpoints: dict[str, str]):
        return ClassifierPool.options(
            name=name,
            autoscaling_config={
                "min_replicas": int(min_replicas),
                "max_replicas": int(max_replicas),
                "target_ongoing_requests": float(target_ongoing_requests),
            },
            # Enough in-flight requests per replica for batches to fill up.
            max_ongoing_requests=max(int(max_batch_size), 2 * int(target_ongoing_requests)),
            ray_actor_options={
                "num_cpus": float(num_cpus_per_replica),
                "num_gpus": float(num_gpus_per_replica),
            },
        ).bind(
            checkpoints,
            max_length=max_length,
            max_batch_size=max_batch_size,
            batch_wait_timeout_s=batch_wait_timeout_s,
        )

    students = pool("ClassifierPool", paths)
    shadow_teacher = None
    if teacher and shadow_fraction > 0:
        shadow_teacher = pool("ShadowTeacher", {TEACHER_ID: _resolve(teacher)})
    return StudentAPI.bind(
        students,
        shadow_teacher,
        model_names=list(paths),
        api_key=api_key,
        max_inputs=max_inputs,
        max_chars=max_chars,
        shadow_fraction=shadow_fraction,
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
