"""Inference Endpoints handler: saved into every model folder as ``handler.py``.

A Hugging Face Inference Endpoint runs ``EndpointHandler(path)`` and calls it with the request's JSON; the
managed text-classification containers cannot run remote code, a custom handler can. It imports only what
the folder itself needs (torch, transformers and the folder's ``modeling_gpt.py``, through
``trust_remote_code``); the model shapes its inputs as in training, so default pipeline calls are right. The answer
is the pipeline's, so it is the same as ``hf-spam serve``'s: Hugging Face's text-classification contract.
"""

from typing import Any

from transformers import pipeline


class EndpointHandler:
    """``{"inputs": str | list[str], "parameters": {"top_k": K | None, "function_to_apply": ...}}`` -> what
    ``pipeline("text-classification")(inputs, **parameters)`` returns (texts cut to the tokenizer's 1,024 tokens)."""

    def __init__(self, path: str = "") -> None:
        self.pipeline = pipeline("text-classification", model=path or ".", trust_remote_code=True)

    def __call__(self, data: dict[str, Any]) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        inputs = data.get("inputs") if isinstance(data, dict) else None
        parameters = (data.get("parameters") or {}) if isinstance(data, dict) else {}
        if not (isinstance(inputs, str) or isinstance(inputs, list) and all(isinstance(t, str) for t in inputs)) \
                or not isinstance(parameters, dict):
            raise ValueError('expected {"inputs": "a text" | ["a text", ...], "parameters": {"top_k": K, ...}}')
        return self.pipeline(inputs, **{"truncation": True, **parameters})
