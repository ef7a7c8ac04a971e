"""The student app's HTTP surface: FastAPI routes, request schemas, limits, auth, errors.

Built once per ingress replica by `StudentAPI.__serve_build_asgi_app__`, after the replica
knows which of its models is which kind, so the OpenAPI schema of each endpoint lists
exactly the model names it serves (an `enum`; schema fuzzers then reach the handlers
instead of stopping at 404). Validation stays lenient on the model name so an unknown one
gets a 404 that lists the served names rather than a generic 422.

Responses are serialized here with `json.dumps` and returned as a `Response`: FastAPI
then skips re-validating them against `response_model` (which still documents them),
which was a per-request cost without a benefit — the handlers build them from typed code.

Routes: `POST /v1/classify` (sequence classifiers), `POST /v1/tag` (token classifiers →
entity spans), `POST /v1/generate` (seq2seq and decoder-only students), `GET /v1/models`,
`GET /v1/stats` (batches this replica formed), `GET /v1/shadow`, `GET /healthz`, plus
`/docs` and `/openapi.json`. Status codes: 400 malformed JSON, 401 API key, 404 unknown
model (or a model of another kind), 413 limits, 422 wrong types / empty inputs, 503 no
replica, 500 model failure.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations, and
# the request models are local to build_fastapi.
import hmac
import json
import logging
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, StrictStr, create_model

from .request_inputs import MalformedInput, classify_input
from .student_kinds import CLASSIFY, ENDPOINT_OF_KIND, GENERATIVE, TAG

if TYPE_CHECKING:
    from .student_app import StudentAPI

logger = logging.getLogger("ray.serve")

# --------------------------------------------------------------------------- schemas


class Prediction(BaseModel):
    label: str
    label_id: int
    probs: dict[str, float]


class ClassifyResponse(BaseModel):
    model: str
    results: list[Prediction]


class Entity(BaseModel):
    type: str
    start_char: int = Field(description="Offset of the span's first character.")
    end_char: int = Field(description="Offset one past the span's last character.")
    text: str = Field(description="The span: input[start_char:end_char].")


class TagResult(BaseModel):
    entities: list[Entity]
    words: list[str] = Field(description="The words the text was split into.")
    tags: list[str] = Field(description="One BIO tag per word (its first sub-token's).")


class TagResponse(BaseModel):
    model: str
    results: list[TagResult]


class Generation(BaseModel):
    text: str


class GenerateResponse(BaseModel):
    model: str
    results: list[Generation]


def _request_model(name: str, models: list[str], item: Any, item_schema: dict, what: str):
    """A request body {model, inputs} whose schema names the served models."""
    model_schema = {"enum": models} if models else {}
    return create_model(
        name,
        model=(
            StrictStr,
            Field(
                description="Served model name (see GET /v1/models).",
                json_schema_extra=model_schema,
            ),
        ),
        inputs=(
            list[item],
            Field(
                min_length=1,
                description=what,
                json_schema_extra={"items": item_schema} if item_schema else None,
            ),
        ),
        __config__={
            "json_schema_extra": {
                "examples": [{"model": models[0] if models else "student", "inputs": ["text"]}]
            }
        },
    )


# --------------------------------------------------------------------------- middleware


class BodyLimit:
    """Pure ASGI middleware: 413 for a declared body over the limit, before it is read.

    (Starlette's `@app.middleware("http")` wraps every request in extra tasks and
    streams; a plain ASGI callable costs nothing on the hot path.)
    """

    def __init__(self, app, ingress: "StudentAPI"):
        self.app = app
        self.ingress = ingress

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            limit = self.ingress.max_body_bytes
            for key, value in scope.get("headers", ()):
                if key == b"content-length":
                    if value.isdigit() and int(value) > limit:
                        ing = self.ingress
                        body = json.dumps(
                            {
                                "detail": f"request body of {value.decode()} bytes exceeds "
                                f"the limit of {limit} bytes (max_inputs={ing.max_inputs}, "
                                f"max_chars={ing.max_chars})"
                            }
                        ).encode()
                        await send(
                            {
                                "type": "http.response.start",
                                "status": 413,
                                "headers": [
                                    (b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()),
                                ],
                            }
                        )
                        await send({"type": "http.response.body", "body": body})
                        return
                    break
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------- app


def build_fastapi(ingress: "StudentAPI"):
    """The FastAPI app of one ingress replica; routes close over its settings."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    app = FastAPI(
        title="raydistill students",
        description="Distilled students served with Ray Serve: classifiers, taggers, "
        "generators. Send `serve_multiplexed_model_id: <model>` as a header to be routed "
        "to a replica that already holds the model (optional).",
        version="2",
    )
    app.add_middleware(BodyLimit, ingress=ingress)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        bad_json = [e for e in errors if e.get("type") in ("json_invalid", "json_decode")]
        if bad_json:
            msg = bad_json[0].get("ctx", {}).get("error") or bad_json[0].get("msg")
            return JSONResponse(status_code=400, content={"detail": f"malformed JSON body: {msg}"})
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
        return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})

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
    errors = {
        400: {"description": "Malformed JSON body"},
        401: {"description": "Missing or wrong API key"},
        404: {"description": "Unknown model, or a model of another kind"},
        413: {"description": "Too many inputs or an input too long"},
        422: {"description": "Wrong types, missing fields or an empty input"},
        500: {"description": "The model failed"},
        503: {"description": "No replica available (overload or starting up)"},
    }
    by_kind = ingress.names_by_endpoint()
    limits = f"at most {ingress.max_inputs} inputs of at most {ingress.max_chars} characters"
    text_item = {"type": "string", "maxLength": ingress.max_chars}
    nonempty = {**text_item, "minLength": 1, "pattern": r"\S"}

    def ok(payload: dict) -> Response:
        return Response(json.dumps(payload), media_type="application/json")

    async def call(endpoint: str, model: str, inputs: list) -> list:
        ingress.check_request(endpoint, model, inputs)
        try:
            return await ingress.run(model, inputs)
        except HTTPException:
            raise
        except Exception as e:
            logger.exception("%s failed for model %r", endpoint, model)
            raise HTTPException(
                status_code=500, detail=f"{endpoint} failed: {type(e).__name__}"
            ) from e

    ClassifyRequest = _request_model(
        "ClassifyRequest",
        by_kind["classify"],
        StrictStr | list[StrictStr] | dict[StrictStr, StrictStr],
        {
            "anyOf": [
                text_item,
                {"type": "array", "items": text_item, "minItems": 2, "maxItems": 2},
                {
                    "type": "object",
                    "properties": {"text": text_item, "text_pair": text_item},
                    "required": ["text", "text_pair"],
                    "additionalProperties": False,
                },
            ]
        },
        f"Texts to classify ({limits}; 413 beyond them), or sentence pairs as "
        '[text, text_pair] or {"text": ..., "text_pair": ...} (NLI: premise, hypothesis).',
    )

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        dependencies=protected,
        tags=["classify"],
        description=f"Classify {limits} each with the named sequence-classification student.",
        responses=errors,
    )
    async def classify(req: ClassifyRequest):  # type: ignore[valid-type]
        try:
            inputs = [classify_input(x, i) for i, x in enumerate(req.inputs)]
        except MalformedInput as e:
            raise HTTPException(status_code=422, detail=str(e)) from e
        results = await call("classify", req.model, inputs)
        ingress.maybe_shadow(req.model, inputs, results)
        return ok({"model": req.model, "results": results})

    TagRequest = _request_model(
        "TagRequest",
        by_kind["tag"],
        StrictStr,
        nonempty,
        f"Texts to tag ({limits}; none empty).",
    )

    @app.post(
        "/v1/tag",
        response_model=TagResponse,
        dependencies=protected,
        tags=["tag"],
        description=f"Entity spans of {limits} each from the named token-classification "
        "student: BIO tags per word (first sub-token), spans with character offsets.",
        responses=errors,
    )
    async def tag(req: TagRequest):  # type: ignore[valid-type]
        return ok({"model": req.model, "results": await call("tag", req.model, req.inputs)})

    GenerateRequest = _request_model(
        "GenerateRequest",
        by_kind["generate"],
        StrictStr | dict[StrictStr, StrictStr | list[StrictStr]],
        {
            "anyOf": [
                nonempty,
                {
                    "type": "object",
                    "additionalProperties": {
                        "anyOf": [
                            {"type": "string", "minLength": 1},
                            {"type": "array", "items": {"type": "string"}},
                        ]
                    },
                },
            ]
        },
        f"Inputs ({limits}; none empty): a string fills the {{text}}/{{source}}/"
        "{question} placeholders of the student's prompt format; an object names each "
        "placeholder, lists (mcqa choices) allowed (see GET /v1/models: fields).",
    )

    @app.post(
        "/v1/generate",
        response_model=GenerateResponse,
        dependencies=protected,
        tags=["generate"],
        description=f"Greedy continuations of {limits} each from the named seq2seq or "
        "decoder-only student (max_new_tokens from the student folder).",
        responses=errors,
    )
    async def generate(req: GenerateRequest):  # type: ignore[valid-type]
        return ok({"model": req.model, "results": await call("generate", req.model, req.inputs)})

    @app.get("/healthz", tags=["ops"])
    async def healthz():
        return {"status": "ok", "models": ingress.model_names}

    @app.get("/v1/models", dependencies=protected, tags=["ops"])
    async def list_models():
        return {
            "models": ingress.describe_models(),
            "shadow": {"enabled": ingress.teacher is not None, "fraction": ingress.stats.fraction},
        }

    @app.get("/v1/stats", dependencies=protected, tags=["ops"])
    async def stats():
        # This replica's batches: with several replicas, read the Ray metrics instead.
        return {"replica": ingress.replica_id, "batches": ingress.batch_stats.snapshot()}

    @app.get("/v1/shadow", dependencies=protected, tags=["ops"])
    async def shadow():
        # pending: shadow requests sent to the teacher whose answers are not counted yet.
        return {**ingress.stats.snapshot(), "pending": len(ingress._tasks)}

    return app


def kind_error(endpoint: str, model: str, kind: str | None, served: list[str]):
    """The 404 detail for a model this endpoint does not serve."""
    from fastapi import HTTPException

    if kind is None:
        detail = f"unknown model {model!r}; served models: {', '.join(served)}"
    else:
        detail = (
            f"model {model!r} is a {kind} student; send it to POST /v1/"
            f"{ENDPOINT_OF_KIND[kind]} (POST /v1/{endpoint} serves "
            f"{', '.join(_endpoint_kinds(endpoint))} students)"
        )
    return HTTPException(status_code=404, detail=detail)


def _endpoint_kinds(endpoint: str) -> list[str]:
    return {"classify": [CLASSIFY], "tag": [TAG], "generate": list(GENERATIVE)}[endpoint]
