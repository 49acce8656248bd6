"""An HTTP service for a trained classifier (FastAPI + uvicorn, the ``serve`` extra).

    POST / or /predict  {"inputs": "..." | ["...", ...], "parameters": {"top_k": K | null, "function_to_apply": ...}}
                        -> what pipeline("text-classification") returns: [{"label", "score"}, ...] (Hugging Face's
                        text-classification contract, so huggingface_hub's InferenceClient works against it)
    GET  /health        {"status": "ok"}
    GET  /info          labels, parameters, pooling, training length, backend, arithmetic (dtype), limits
    GET  /metrics       Prometheus text format: requests and texts by status, batch sizes, latency, queue depth
    GET  /docs          the OpenAPI page (/openapi.json)

Requests from many clients are gathered into batches: a batcher takes what is waiting (up to
``max_batch_size`` texts, waiting at most ``max_wait_ms`` for more) and runs its forward pass in a worker
thread while new requests keep arriving; up to ``workers`` batches compute at once, so that the cores stay
busy while a batch is gathered, answered, or between operations. Memory is bounded: at most ``max_queue``
texts wait; beyond that a request is answered 503 with ``Retry-After``. Bad requests get a JSON error and a
4xx status (400 for a body that is not UTF-8, 422 for malformed JSON or wrong types, 413 for too many texts or
characters), and the server keeps serving. Stopping (Ctrl-C, SIGTERM) lets accepted requests finish.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .errors import HfSpamError, UnavailableError
from .memory import release_freed_memory
from .predict import SCORES, SpamClassifier, check_parameters

try:  # the serve extra: pip install "hf-spam[serve]"
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from pydantic import BaseModel
except ImportError:  # pragma: no cover - exercised by the one-line error in serve()
    FastAPI = BaseModel = None

USAGE = '{"inputs": "a text" | ["a text", ...], "parameters": {"top_k": K | null, "function_to_apply": "softmax"}}'
REQUEST_SCHEMA = {  # what POST / and /predict read (the body is read raw: a body that is not UTF-8 is a 400)
    "type": "object", "required": ["inputs"], "properties": {
        "inputs": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                   "description": "a text, or a list of texts"},
        "parameters": {"type": "object", "additionalProperties": False, "properties": {
            "top_k": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "description": "given: each "
                      "text's labels by score, the first top_k (null: all), a list per text; absent: the best label"},
            "function_to_apply": {"enum": list(SCORES), "description": "default: softmax"}}}},
    "examples": [{"inputs": "WIN a prize now"}, {"inputs": ["WIN a prize now", "see you at 7"],
                                                 "parameters": {"top_k": None}}]}


@dataclass
class Limits:
    """What one request may carry and how many texts may wait, how batches are formed and how many run at once."""

    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_texts: int = 256
    max_chars: int = 20_000
    workers: int = 2


@dataclass
class _Job:
    texts: list[str]
    done: asyncio.Future


class _Refused(Exception):
    """A request answered with an error status and ``{"error": message}``."""

    def __init__(self, status: int, message: str, texts: int = 0, **headers: str):
        super().__init__(message)
        self.status, self.texts, self.headers = status, texts, headers


def _request(body: bytes, limits: Limits) -> tuple[str | list[str], dict[str, Any]]:
    """The inputs and checked parameters of a request body, or ``_Refused`` with the status it deserves."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise _Refused(400, "the request body is not UTF-8") from None
    except ValueError:
        raise _Refused(422, f"malformed JSON; expected {USAGE}") from None
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    if not (isinstance(inputs, str) or isinstance(inputs, list) and all(isinstance(t, str) for t in inputs)):
        raise _Refused(422, f"expected {USAGE}: inputs a text or a list of texts")
    try:
        parameters = check_parameters(payload.get("parameters"))
    except HfSpamError as err:
        raise _Refused(422, str(err)) from None
    texts = [inputs] if isinstance(inputs, str) else inputs
    if len(texts) > limits.max_texts:
        raise _Refused(413, f"{len(texts)} texts in one request; at most {limits.max_texts}", len(texts))
    if sum(len(t) for t in texts) > limits.max_chars:
        raise _Refused(413, f"more than {limits.max_chars} characters in one request", len(texts))
    return inputs, parameters


if BaseModel is not None:
    class LabelScore(BaseModel):
        """One label of a text and its score (``function_to_apply`` of the logits)."""

        label: str
        score: float

    class Error(BaseModel):
        error: str


def _metrics(limits: Limits, waiting: dict[str, int]) -> tuple[CollectorRegistry, dict[str, Any]]:
    """The app's own Prometheus registry (several apps in one process do not clash) and its metrics."""
    registry = CollectorRegistry()
    metrics = {
        "requests": Counter("hf_spam_requests", "Classification requests by HTTP status", ["status"],
                            registry=registry),
        "texts": Counter("hf_spam_texts", "Texts in classification requests by HTTP status", ["status"],
                         registry=registry),
        "batch": Histogram("hf_spam_batch_texts", "Texts per batch the model ran", registry=registry,
                           buckets=sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, limits.max_batch_size})),
        "latency": Histogram("hf_spam_request_seconds", "Classification request latency", registry=registry),
        "running": Histogram("hf_spam_batches_running", "Batches already computing when a batch started",
                             registry=registry, buckets=list(range(limits.workers)))}
    Gauge("hf_spam_queue_texts", "Texts accepted and not yet answered", registry=registry).set_function(
        lambda: waiting["texts"])
    return registry, metrics


def create_app(classifier: SpamClassifier, limits: Limits, backend: str = "torch") -> FastAPI:
    """The ASGI app: routes, the request queue and its batcher (started and stopped with the app)."""
    queue: asyncio.Queue[_Job] = asyncio.Queue()
    waiting = {"texts": 0}  # texts accepted and not yet answered: what bounds memory
    registry, metrics = _metrics(limits, waiting)
    info = {"labels": classifier.names, "backend": backend, "model_type": classifier.config.model_type,
            **classifier.inputs, "model_bytes": classifier.model_bytes, **classifier.arithmetic.info(),
            "max_batch_size": limits.max_batch_size, "max_wait_ms": limits.max_wait_ms, "max_queue": limits.max_queue,
            "max_texts_per_request": limits.max_texts, "max_chars_per_request": limits.max_chars,
            "workers": limits.workers}

    def run(texts: list[str]) -> torch.Tensor:
        return classifier.logits_of(classifier.encode(texts), limits.max_batch_size)

    workers: dict[str, ThreadPoolExecutor] = {}  # the forward passes' threads, from the app's start to its end
    slots = asyncio.Semaphore(limits.workers)  # a batch is gathered only when a worker is free for it
    running: set[asyncio.Task] = set()  # the batches computing (held here: the loop keeps only weak references)

    async def compute(jobs: list[_Job], texts: list[str]) -> None:
        """One forward pass for the whole batch, off the event loop; its answers, or its error, to each request."""
        try:
            logits = await asyncio.get_running_loop().run_in_executor(workers["pool"], run, texts)
        except Exception as err:  # a failure of the model answers these requests 500, not the server's end
            for job in jobs:
                job.done.set_exception(err)
        else:
            for job in jobs:
                job.done.set_result(logits[: len(job.texts)])
                logits = logits[len(job.texts):]
            release_freed_memory()  # batches of every shape come and go: keep the heap from growing
        finally:
            running.discard(asyncio.current_task())
            slots.release()

    async def batcher() -> None:
        loop = asyncio.get_running_loop()
        while True:
            await slots.acquire()
            jobs = [await queue.get()]
            size, deadline = len(jobs[0].texts), loop.time() + limits.max_wait_ms / 1000
            while size < limits.max_batch_size and (timeout := deadline - loop.time()) > 0:
                try:
                    jobs.append(await asyncio.wait_for(queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
                size += len(jobs[-1].texts)
            texts = [t for job in jobs for t in job.texts]
            metrics["batch"].observe(len(texts))
            metrics["running"].observe(len(running))
            running.add(asyncio.create_task(compute(jobs, texts)))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        workers["pool"] = ThreadPoolExecutor(limits.workers, thread_name_prefix="hf-spam-forward")
        task = asyncio.create_task(batcher())
        yield
        task.cancel()
        workers.pop("pool").shutdown(wait=False)

    app = FastAPI(title="hf-spam", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    async def get_info() -> dict[str, Any]:
        return info

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def get_metrics() -> Response:
        """Prometheus' text format."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def answer(body: bytes) -> tuple[Any, int]:
        """What a request gets (pipeline-shaped results) and its number of texts, or ``_Refused``."""
        inputs, parameters = _request(body, limits)
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not texts:
            return [], 0
        if waiting["texts"] + len(texts) > limits.max_queue:
            raise _Refused(503, f"the queue is full ({limits.max_queue} texts waiting); retry shortly", len(texts),
                           **{"Retry-After": "1"})
        job = _Job(texts, asyncio.get_running_loop().create_future())
        waiting["texts"] += len(texts)
        try:
            await queue.put(job)
            logits = await job.done
        except Exception:
            raise _Refused(500, "the model failed on this batch", len(texts)) from None
        finally:
            waiting["texts"] -= len(texts)
        return classifier.pipeline_results(logits, isinstance(inputs, str), parameters), len(texts)

    errors = {code: {"model": Error, "description": what} for code, what in [
        (400, "the body is not UTF-8"), (413, "too many texts or characters in one request"),
        (422, "malformed JSON, inputs not a text or a list of texts, or bad parameters"),
        (503, "the queue is full (with Retry-After)")]}

    documented = {"response_model": list[LabelScore] | list[list[LabelScore]], "responses": errors, "openapi_extra": {
        "requestBody": {"required": True, "content": {"application/json": {"schema": REQUEST_SCHEMA}}}}}

    @app.post("/", summary="Classify texts (Hugging Face's text-classification contract)", **documented)
    @app.post("/predict", summary="Classify texts (the same as POST /)", **documented)
    async def classify(request: Request) -> Response:
        """What ``pipeline("text-classification")(inputs, **parameters)`` returns: without ``top_k`` the best
        ``{"label", "score"}`` per text; with it a list of labels by score per text (one list for one text)."""
        started, status, texts = time.perf_counter(), 200, 0
        try:
            results, texts = await answer(await request.body())
            response = JSONResponse(results)
        except _Refused as refused:
            status, texts = refused.status, refused.texts
            response = JSONResponse({"error": str(refused)}, status_code=status, headers=refused.headers or None)
        metrics["requests"].labels(str(status)).inc()
        metrics["texts"].labels(str(status)).inc(texts)
        metrics["latency"].observe(time.perf_counter() - started)
        return response

    return app


def serve(classifier: SpamClassifier, limits: Limits, host: str, port: int, backend: str) -> None:
    """Run the service until Ctrl-C or SIGTERM (accepted requests finish first)."""
    if FastAPI is None:
        raise UnavailableError('hf-spam serve needs the serve extra: pip install "hf-spam[serve]"')
    app = create_app(classifier, limits, backend)
    arithmetic = classifier.arithmetic
    print(f"Serving the {backend} model in {arithmetic.dtype} ({arithmetic.reason}) on http://{host}:{port} (POST / or "
          "/predict, GET /health, /info, /metrics, /docs)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)
