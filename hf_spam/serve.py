"""An HTTP service for a trained classifier (FastAPI + uvicorn, the ``serve`` extra).

    POST /predict   {"texts": ["...", ...]} or {"inputs": "..." | [...]} -> one result per text, in order
    GET  /health    {"status": "ok"}
    GET  /info      labels, parameters, pooling, training length, backend, limits

Requests from many clients are gathered into batches: a batcher takes what is waiting (up to
``max_batch_size`` texts, waiting at most ``max_wait_ms`` for more) and runs one forward pass in a worker
thread while new requests keep arriving. Memory is bounded: at most ``max_queue`` texts wait; beyond that a
request is answered 503 with ``Retry-After``. Bad requests get a JSON error and a 4xx status (400 for a
body that is not UTF-8, 422 for malformed JSON or wrong types, 413 for too many texts or characters), and
the server keeps serving. Stopping (Ctrl-C, SIGTERM) lets accepted requests finish.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from .errors import UnavailableError
from .memory import release_freed_memory
from .predict import SpamClassifier

try:  # the serve extra: pip install "hf-spam[serve]"
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
except ImportError:  # pragma: no cover - exercised by the one-line error in serve()
    FastAPI = None


@dataclass
class Limits:
    """What one request may carry and how many texts may wait, and how batches are formed."""

    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_texts: int = 256
    max_chars: int = 20_000


@dataclass
class _Job:
    texts: list[str]
    done: asyncio.Future


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def _texts(body: bytes, limits: Limits) -> list[str] | JSONResponse:
    """The texts of a request body, or the error response it deserves."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        return _error(400, "the request body is not UTF-8")
    except ValueError:
        return _error(422, 'malformed JSON; expected {"texts": ["...", ...]}')
    texts = payload.get("texts", payload.get("inputs")) if isinstance(payload, dict) else None
    texts = [texts] if isinstance(texts, str) and "texts" not in payload else texts
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return _error(422, 'expected {"texts": ["...", ...]} (or {"inputs": "..." | ["...", ...]}): a list of strings')
    if len(texts) > limits.max_texts:
        return _error(413, f"{len(texts)} texts in one request; at most {limits.max_texts}")
    if sum(len(t) for t in texts) > limits.max_chars:
        return _error(413, f"more than {limits.max_chars} characters in one request")
    return texts


def create_app(classifier: SpamClassifier, limits: Limits, backend: str = "torch") -> FastAPI:
    """The ASGI app: routes, the request queue and its batcher (started and stopped with the app)."""
    queue: asyncio.Queue[_Job] = asyncio.Queue()
    waiting = {"texts": 0}  # texts accepted and not yet answered: what bounds memory
    info = {"labels": classifier.names, "backend": backend,
            "pooling": classifier.config.pooling, "training_length": classifier.config.training_length,
            "model_bytes": classifier.model_bytes, "max_batch_size": limits.max_batch_size,
            "max_wait_ms": limits.max_wait_ms, "max_queue": limits.max_queue,
            "max_texts_per_request": limits.max_texts, "max_chars_per_request": limits.max_chars}

    async def batcher() -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await queue.get()]
            size, deadline = len(jobs[0].texts), loop.time() + limits.max_wait_ms / 1000
            while size < limits.max_batch_size and (timeout := deadline - loop.time()) > 0:
                try:
                    jobs.append(await asyncio.wait_for(queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
                size += len(jobs[-1].texts)
            texts = [t for job in jobs for t in job.texts]
            try:  # one forward pass for the whole batch, off the event loop
                results = await loop.run_in_executor(None, classifier.predict_labels, texts)
            except Exception as err:  # a failure of the model answers these requests 500, not the server's end
                for job in jobs:
                    job.done.set_exception(err)
                continue
            for job in jobs:
                job.done.set_result(results[: len(job.texts)])
                results = results[len(job.texts):]
            release_freed_memory()  # batches of every shape come and go: keep the heap from growing

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(batcher())
        yield
        task.cancel()

    app = FastAPI(title="hf-spam", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    async def get_info() -> dict[str, Any]:
        return info

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        texts = _texts(await request.body(), limits)
        if isinstance(texts, JSONResponse):
            return texts
        if not texts:
            return {"results": []}
        if waiting["texts"] + len(texts) > limits.max_queue:
            return _error(503, f"the queue is full ({limits.max_queue} texts waiting); retry shortly", **{
                "Retry-After": "1"})
        job = _Job(texts, asyncio.get_running_loop().create_future())
        waiting["texts"] += len(texts)
        try:
            await queue.put(job)
            results = await job.done
        except Exception:
            return _error(500, "the model failed on this batch")
        finally:
            waiting["texts"] -= len(texts)
        return {"results": results}

    return app


def serve(classifier: SpamClassifier, limits: Limits, host: str, port: int, backend: str) -> None:
    """Run the service until Ctrl-C or SIGTERM (accepted requests finish first)."""
    if FastAPI is None:
        raise UnavailableError('hf-spam serve needs the serve extra: pip install "hf-spam[serve]"')
    app = create_app(classifier, limits, backend)
    print(f"Serving the {backend} model on http://{host}:{port} (POST /predict, GET /health, GET /info)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)
