"""HTTP: KServe's health and v1 predict routes, OpenAI completions and chat completions, feedback
and metrics, as a FastAPI application around a `Responder`.

Errors are JSON: OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`) everywhere but
under `/v1/models/<name>`, which uses KServe v1's (`{"error": "message"}`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunerag_workloads.serve.exchange import BadRequest, Exchange, Responder, UnknownModel
from tunerag_workloads.serve.rag import RetrievalUnavailable

MAX_TEXT = 100_000


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send options this server does not use


class Instance(_Body):
    prompt: str | None = Field(default=None, max_length=MAX_TEXT)
    question: str | None = Field(default=None, max_length=MAX_TEXT)
    adapter: str | None = Field(default=None, description="An adapter version, the service name or 'base'.")

    @model_validator(mode="after")
    def _one_text(self) -> Instance:
        if self.prompt is None and self.question is None:
            raise ValueError("an instance needs a prompt (or a question)")
        return self

    @property
    def text(self) -> str:
        return self.prompt if self.prompt is not None else str(self.question)


class PredictRequest(_Body):
    instances: list[Instance] = Field(min_length=1, max_length=64)


class CompletionRequest(_Body):
    model: str | None = None
    prompt: str | list[str] = Field(max_length=MAX_TEXT)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = 1


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] = Field(max_length=MAX_TEXT)

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")


class ChatRequest(_Body):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = 1


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    exchange_id: uuid.UUID = Field(alias="exchangeId")
    label: Literal["positive", "negative"]
    comment: str | None = Field(default=None, max_length=4096)


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 503: "service_unavailable", 500: "server_error"}


def _error(request: Request, status: int, message: str, code: str) -> JSONResponse:
    if request.url.path.startswith("/v1/models/"):
        return JSONResponse({"error": message}, status_code=status)
    return JSONResponse({"error": {"message": message, "type": ERROR_TYPES.get(status, "error"), "param": None, "code": code}},
                        status_code=status)


B = TypeVar("B", bound=BaseModel)


async def _body(request: Request, model: type[B]) -> B:
    """The JSON body, whatever the Content-Type says (curl sends form encoding by default)."""
    try:
        return model.model_validate(json.loads(await request.body()))
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    except ValidationError as exc:
        raise BadRequest("; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                                   for e in exc.errors()[:5])) from None


def _usage(ex: Exchange) -> dict[str, int]:
    return {"prompt_tokens": ex.tokens_in, "completion_tokens": ex.tokens_out, "total_tokens": ex.tokens_in + ex.tokens_out}


def _options(stream: bool, n: int) -> None:
    if stream:
        raise BadRequest("stream is not supported by this server")
    if n != 1:
        raise BadRequest("n must be 1")


def create_app(responder: Responder, *, drain_seconds: float = 10.0, openai_prefix: str | None = None) -> FastAPI:
    """`openai_prefix`: serve the OpenAI routes under /<prefix>/v1/... as well (default: the
    environment's KSERVE_OPENAI_ROUTE_PREFIX, if set)."""
    config = responder.config
    prefix = (os.environ.get("KSERVE_OPENAI_ROUTE_PREFIX", "") if openai_prefix is None else openai_prefix).strip("/")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if responder.log is not None:
            responder.log.start()
        app.state.ready = True
        yield
        app.state.ready = False
        if responder.log is not None:  # uvicorn has answered the requests in flight: drain the log
            await asyncio.to_thread(responder.log.close, drain_seconds)
        if responder.retriever is not None:
            responder.retriever.close()

    app = FastAPI(title=f"tunerag serve: {config.service}", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.ready = False

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(request, exc.status, exc.message, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                             for e in exc.errors()[:5])
        return _error(request, 400, problems, "invalid_request")

    @app.exception_handler(BadRequest)
    async def _bad(request: Request, exc: BadRequest) -> JSONResponse:
        return _error(request, 400, str(exc), "invalid_request")

    @app.exception_handler(UnknownModel)
    async def _unknown(request: Request, exc: UnknownModel) -> JSONResponse:
        return _error(request, 404, str(exc), "model_not_found")

    @app.exception_handler(RetrievalUnavailable)
    async def _unavailable(request: Request, exc: RetrievalUnavailable) -> JSONResponse:
        return _error(request, 503, f"retrieval is unavailable: {exc.reason}: {exc.message}", exc.reason)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return _error(request, 500, f"internal error: {type(exc).__name__}", "internal_error")

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": bool(app.state.ready)}, status_code=200 if app.state.ready else 503)

    names = {config.service, *config.aliases}

    def model_status(name: str) -> dict[str, Any]:
        if name not in names:
            raise ApiError(404, f"model {name} does not exist", "model_not_found")
        return {"name": name, "ready": bool(app.state.ready)}

    app.get("/v1/models/{name}")(model_status)
    app.get("/v2/models/{name}/ready")(model_status)

    @app.post("/v1/models/{name}:predict")
    async def predict(name: str, request: Request) -> dict[str, Any]:
        if name not in names:
            raise ApiError(404, f"model {name} does not exist; this server serves {config.service}", "model_not_found")
        body = await _body(request, PredictRequest)
        adapters = [responder.resolve(i.adapter) for i in body.instances]  # all known before any work
        predictions = []
        for instance, adapter in zip(body.instances, adapters, strict=True):
            ex = await responder.answer(question=instance.text, adapter=adapter, endpoint="predict")
            predictions.append({"text": ex.text, **ex.provenance()})
        return {"predictions": predictions}

    openai = APIRouter()

    @openai.get("/v1/models")
    async def models() -> dict[str, Any]:
        """OpenAI's model list; `models` is KServe v1's answer on the same path."""
        created = int(time.time())
        return {"object": "list", "data": [{"id": m, "object": "model", "created": created, "owned_by": "tunerag",
                                            "root": responder.resolve(m)} for m in responder.models],
                "models": [config.service]}

    @openai.post("/v1/completions")
    async def completions(request: Request) -> dict[str, Any]:
        body = await _body(request, CompletionRequest)
        adapter = responder.resolve(body.model)
        _options(body.stream, body.n)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise BadRequest("prompt must be one string")
        stop = [body.stop] if isinstance(body.stop, str) else body.stop
        ex = await responder.answer(question=prompts[0], adapter=adapter, endpoint="completions",
                                    max_tokens=body.max_tokens, stop=stop)
        return {"id": f"cmpl-{ex.exchange_id}", "object": "text_completion", "created": int(time.time()),
                "model": ex.adapter_version,
                "choices": [{"index": 0, "text": ex.text, "logprobs": None, "finish_reason": ex.finish_reason}],
                "usage": _usage(ex), "tunerag": ex.provenance()}

    @openai.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> dict[str, Any]:
        body = await _body(request, ChatRequest)
        adapter = responder.resolve(body.model)
        _options(body.stream, body.n)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        questions = [m["content"] for m in messages if m["role"] == "user"]
        if not questions:
            raise BadRequest("messages must include a user message")
        stop = [body.stop] if isinstance(body.stop, str) else body.stop
        ex = await responder.answer(question=questions[-1], messages=messages, adapter=adapter, endpoint="chat_completions",
                                    max_tokens=body.max_completion_tokens or body.max_tokens, stop=stop)
        return {"id": f"chatcmpl-{ex.exchange_id}", "object": "chat.completion", "created": int(time.time()),
                "model": ex.adapter_version,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": ex.text},
                             "finish_reason": ex.finish_reason}],
                "usage": _usage(ex), "tunerag": ex.provenance()}

    app.include_router(openai)
    if prefix:  # also where KServe's own OpenAI runtimes put them, e.g. /openai/v1/completions
        app.include_router(openai, prefix="/" + prefix.strip("/"))

    @app.post("/v1/feedback", status_code=202)
    async def feedback(request: Request) -> dict[str, Any]:
        body = await _body(request, FeedbackRequest)
        version = responder.feedback(str(body.exchange_id), body.label, body.comment)
        return {"exchangeId": str(body.exchange_id), "label": body.label, "adapterVersion": version, "status": "accepted"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(responder.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app
