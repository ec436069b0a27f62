"""OpenTelemetry GenAI semantic-convention attributes for a DSPy LM call.

Request parameters are taken from an allow-list, so API keys and other secrets in the
LM's keyword arguments never reach a span. Message contents are added only when the
user opted in, and even then any secret value seen in the parameters is masked.
"""

from __future__ import annotations

import json
from typing import Any

from commands.secrets import secret_values

# DSPy/litellm parameter name -> GenAI attribute.
_REQUEST_PARAMETERS = {
    "temperature": "gen_ai.request.temperature",
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
    "n": "gen_ai.request.choice.count",
    "stop": "gen_ai.request.stop_sequences",
}
MAX_CONTENT_CHARS = 16_000
_MASK = "[secret removed]"


def as_json(value: Any, secrets: frozenset[str] = frozenset()) -> str:
    """Value as compact JSON for a span attribute, truncated and with secrets masked."""
    text = json.dumps(value, default=str, ensure_ascii=False)
    for secret in secrets:
        text = text.replace(secret, _MASK)
    if len(text) > MAX_CONTENT_CHARS:
        text = text[:MAX_CONTENT_CHARS] + "...[truncated]"
    return text


def provider_of(model: str, lm: Any) -> str:
    """The provider part of a litellm model name (``openai/gpt-4o`` -> ``openai``)."""
    if "/" in model:
        return model.split("/", 1)[0]
    return type(lm).__name__


def request(lm: Any, inputs: dict[str, Any], capture_content: bool) -> dict[str, Any]:
    """Attributes known when the LM call starts."""
    model = str(getattr(lm, "model", type(lm).__name__))
    params = dict(getattr(lm, "kwargs", {}) or {})
    params.update(inputs.get("kwargs") or {})
    provider = provider_of(model, lm)
    model_type = getattr(lm, "model_type", "chat")
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "text_completion" if model_type == "text" else "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,
        "gen_ai.request.model": model,
    }
    for name, attribute in _REQUEST_PARAMETERS.items():
        value = params.get(name)
        if isinstance(value, str) and attribute.endswith("stop_sequences"):
            value = [value]
        if isinstance(value, (bool, int, float, str)) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            attributes[attribute] = value
    if capture_content:
        messages = inputs.get("messages") or inputs.get("prompt")
        if messages is not None:
            attributes["gen_ai.input.messages"] = as_json(messages, secret_values(params))
    return attributes


def response(entry: dict[str, Any] | None, capture_content: bool) -> dict[str, Any]:
    """Attributes from DSPy's history entry once the call returned."""
    if not entry:
        return {}
    attributes: dict[str, Any] = {}
    if entry.get("response_model"):
        attributes["gen_ai.response.model"] = str(entry["response_model"])
    usage = entry.get("usage") or {}
    if isinstance(usage, dict):
        for key, attribute in (
            ("prompt_tokens", "gen_ai.usage.input_tokens"),
            ("completion_tokens", "gen_ai.usage.output_tokens"),
        ):
            if isinstance(usage.get(key), int):
                attributes[attribute] = usage[key]
    cost = entry.get("cost")
    if isinstance(cost, (int, float)) and not isinstance(cost, bool):
        attributes["dspy_ledger.cost_usd"] = float(cost)
    if capture_content and entry.get("outputs") is not None:
        attributes["gen_ai.output.messages"] = as_json(entry["outputs"])
    return attributes
