"""One exchange, whatever the endpoint: pick the adapter, retrieve, build the prompt, generate
(in a worker thread), count it, log it. The HTTP layer (`app.py`) only translates."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from tunerag_workloads.serve.config import BASE, ServeConfig
from tunerag_workloads.serve.engine import Engine, PromptTooLong
from tunerag_workloads.serve.feedback import FeedbackLog
from tunerag_workloads.serve.metrics import ServeMetrics
from tunerag_workloads.serve.rag import Retriever, provenance

REMEMBERED_EXCHANGES = 100_000  # exchange id -> adapter version, for the feedback metric's label


class UnknownModel(LookupError):
    pass


class BadRequest(ValueError):
    pass


@dataclass
class Exchange:
    exchange_id: str
    adapter_version: str
    text: str
    prompt: str
    tokens_in: int
    tokens_out: int
    finish_reason: str
    chunks: list[dict[str, Any]] = field(default_factory=list)

    def provenance(self) -> dict[str, Any]:
        return {"adapterVersion": self.adapter_version, "exchangeId": self.exchange_id, "chunks": self.chunks}


class Responder:
    def __init__(self, config: ServeConfig, engine: Engine, metrics: ServeMetrics,
                 retriever: Retriever | None = None, log: FeedbackLog | None = None) -> None:
        self.config = config
        self.engine = engine
        self.metrics = metrics
        self.retriever = retriever
        self.log = log
        self._versions: OrderedDict[str, str] = OrderedDict()

    @property
    def models(self) -> list[str]:
        """What `model` may name: the service and its aliases (its default adapter), each adapter, the
        base model."""
        base = [BASE] if self.engine.has_base else []
        return list(dict.fromkeys([self.config.service, *self.config.aliases, *self.engine.adapters, *base]))

    def resolve(self, model: str | None) -> str:
        """The adapter version a request's `model` selects (None: the default)."""
        if model is None or model == "":
            return self.config.default_adapter
        if model in self.engine.adapters or (model == BASE and self.engine.has_base):
            return model
        if model == self.config.service or model in self.config.aliases:
            return self.config.default_adapter
        raise UnknownModel(f"the model {model!r} does not exist; this server has: {', '.join(self.models)}")

    async def answer(self, *, question: str, adapter: str, endpoint: str, messages: list[dict[str, str]] | None = None,
                     max_tokens: int | None = None, stop: list[str] | None = None) -> Exchange:
        """Answers `question` (a completion prompt), or `messages` (a chat, whose last user turn is
        the question). With retrieval the question is wrapped in the prompt template first."""
        started = time.perf_counter()
        limit = min(max_tokens or self.config.generation.max_new_tokens, self.config.generation.max_new_tokens)
        try:
            chunks = await asyncio.to_thread(self.retriever.retrieve, question) if self.retriever else []
            user_text = self.retriever.prompt(question, chunks) if self.retriever else question
            if messages is not None:
                last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
                turns = [*messages[:last_user], {**messages[last_user], "content": user_text}, *messages[last_user + 1:]]
                prompt, templated = self.engine.chat_prompt(turns)
            else:
                prompt, templated = user_text, False
            generated = await asyncio.to_thread(self.engine.generate, prompt, adapter, limit, templated=templated)
        except PromptTooLong as exc:
            raise BadRequest(str(exc)) from exc
        except Exception:  # RetrievalUnavailable (503) and failures of the server (500)
            self.metrics.request(adapter, endpoint, "error", time.perf_counter() - started)
            raise
        seconds = time.perf_counter() - started
        self.metrics.request(adapter, endpoint, "ok", seconds)
        self.metrics.count_tokens(adapter, generated.tokens_in, generated.tokens_out)
        text = _cut(generated.text, stop)
        exchange = Exchange(exchange_id=str(uuid.uuid4()), adapter_version=adapter, text=text, prompt=prompt,
                            tokens_in=generated.tokens_in, tokens_out=generated.tokens_out,
                            finish_reason="stop" if text != generated.text else generated.finish_reason,
                            chunks=[provenance(c) for c in chunks])
        self._remember(exchange.exchange_id, adapter)
        if self.log is not None:
            self.log.log_exchange({
                "exchange_id": exchange.exchange_id, "created_at": time.time() - seconds,
                "namespace": self.config.namespace, "service": self.config.service, "adapter_version": adapter,
                "endpoint": endpoint, "question": question, "prompt": prompt,
                "chunk_ids": [c.id for c in chunks], "chunk_documents": [c.document for c in chunks],
                "answer": text, "latency_ms": seconds * 1000.0,
            })
        return exchange

    def feedback(self, exchange_id: str, label: str, comment: str | None) -> str:
        """Counts the feedback under its exchange's adapter version ("unknown" for an exchange this
        process did not answer) and queues it for the log; returns the adapter version."""
        version = self._versions.get(exchange_id, "unknown")
        self.metrics.count_feedback(version, label)
        if self.log is not None:
            self.log.log_feedback(exchange_id, label, comment)
        return version

    def _remember(self, exchange_id: str, version: str) -> None:
        self._versions[exchange_id] = version
        if len(self._versions) > REMEMBERED_EXCHANGES:
            self._versions.popitem(last=False)


def _cut(text: str, stop: list[str] | None) -> str:
    """The text up to the first stop sequence (OpenAI's `stop`)."""
    cut = min((i for s in stop or [] if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]
