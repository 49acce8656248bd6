"""Inference Endpoints handler: saved into every model folder as ``handler.py``.

A Hugging Face Inference Endpoint runs ``EndpointHandler(path)`` and calls it with the request's JSON; the
managed text-classification containers cannot run remote code, a custom handler can. It imports only what
the folder itself needs (torch, transformers and the folder's ``modeling_gpt.py``, through
``trust_remote_code``); the model shapes its inputs as in training, so default pipeline calls are right.
"""

from typing import Any

from transformers import pipeline


class EndpointHandler:
    """``{"inputs": str | list[str]}`` -> label/score lists, like ``pipeline("text-classification")``."""

    def __init__(self, path: str = "") -> None:
        self.pipeline = pipeline("text-classification", model=path or ".", trust_remote_code=True)

    def __call__(self, data: dict[str, Any]) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        inputs = data.get("inputs") if isinstance(data, dict) else None
        if not (isinstance(inputs, str) or isinstance(inputs, list) and all(isinstance(t, str) for t in inputs)):
            raise ValueError('expected {"inputs": "a text"} or {"inputs": ["a text", ...]}')
        return self.pipeline(inputs, **(data.get("parameters") or {}))
