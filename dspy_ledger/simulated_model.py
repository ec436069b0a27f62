"""A SIMULATED OpenAI-compatible chat-completions server for demos and tests.

Nothing in this module is a real language model. ``SimulatedModelServer`` is
a tiny stdlib HTTP server on loopback (``127.0.0.1``, OS-chosen port) that
speaks enough of the OpenAI chat-completions wire format for DSPy's ordinary
``dspy.LM("openai/sim-qa-small", api_base=server.api_base, api_key=...)`` to
work end to end, offline and deterministically. ``dspy-ledger demo`` and the
test-suite use it so that recorded LM calls carry real (simulated) token usage
and a real cost computed by DSPy's own pricing path.

What is simulated
-----------------
* Two models, ``sim-qa-small`` and ``sim-qa-large`` (see ``SIMULATED_MODELS``
  for their made-up per-1M-token prices).
* A fixed question-answering task (``demo_examples()``): 40 short factual
  questions with one-word answers. The server knows the right answers.
* Answer quality is deterministic per question: each question has a fixed,
  hash-derived "difficulty" rank. A model answers correctly when the rank is
  below its accuracy for the situation (with or without few-shot demos in the
  prompt), otherwise it gives a fixed, plausible wrong answer. So, over
  ``demo_examples()``: ``sim-qa-small`` scores 55 % without demos and 90 %
  with them; ``sim-qa-large`` 80 % without and 97.5 % with (a little more
  when the evaluated questions include the demos themselves, see below). A
  question the server does not know gets the fixed answer ``"unknown"``.
* Few-shot demos are detected the way DSPy's adapters send them: as prior
  ``user``/``assistant`` message pairs before the final user message. Any
  assistant message in the request counts as "the prompt has demos". If a
  demo contains the very question being asked, its answer is copied.
* Output follows DSPy's ChatAdapter format (``[[ ## field ## ]]`` sections
  ending with ``[[ ## completed ## ]]``); when the prompt asks for a JSON
  object (DSPy's JSONAdapter) the reply is a JSON object instead. The
  requested output fields are read from the prompt.
* Token usage is a deterministic estimate: ``ceil(characters / 4)`` (at least
  1) of the concatenated text of all request messages for
  ``prompt_tokens``, and of the reply text for ``completion_tokens``. It is
  not a real tokenizer.
* Fault injection: a question containing ``[[fail]]`` gets HTTP 500 with an
  OpenAI-style error body; ``[[slow]]`` delays the reply by 0.2 s.

Prices and DSPy 3.4
-------------------
DSPy 3.4's default engine (``engine="auto"``) sends ``openai/<model>`` calls
that carry only ``api_base``/``api_key``/``timeout`` through its bundled
native lm15 client, not through LiteLLM, and prices them from DSPy's own
copy of LiteLLM's price map (``dspy.clients.model_metadata``,
``dspy.clients.costs.estimate_cost``). LiteLLM is only used with
``engine="litellm"`` or when the call falls back to it (for example
when ``OPENAI_API_BASE`` is set, or for extra client settings such as
``headers``); then the cost is LiteLLM's own ``response_cost``.
``register_simulated_prices()`` therefore records the simulated prices in
both tables, so the history entry's ``cost`` is not ``None`` on either path.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import math
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, cast

# Both LiteLLM and DSPy's price table fetch a remote price map on first use
# unless told to use the bundled copy. This must happen before either loads.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

__all__ = [
    "FAIL_TOKEN",
    "SIMULATED_MODELS",
    "SLOW_TOKEN",
    "SimulatedModelPrice",
    "SimulatedModelServer",
    "demo_examples",
    "expected_cost",
    "register_simulated_prices",
    "simulated_answer",
]


@dataclass(frozen=True)
class SimulatedModelPrice:
    """Made-up prices and quality of one simulated model.

    Attributes:
        input_per_million: USD per 1,000,000 prompt tokens.
        output_per_million: USD per 1,000,000 completion tokens.
        accuracy_without_demos: Fraction of ``demo_examples()`` answered
            correctly when the prompt holds no few-shot demonstrations.
        accuracy_with_demos: The same fraction when it does.
    """

    input_per_million: float
    output_per_million: float
    accuracy_without_demos: float
    accuracy_with_demos: float

    @property
    def input_cost_per_token(self) -> float:
        """USD per prompt token (LiteLLM's ``input_cost_per_token``)."""
        return self.input_per_million / 1_000_000

    @property
    def output_cost_per_token(self) -> float:
        """USD per completion token (LiteLLM's ``output_cost_per_token``)."""
        return self.output_per_million / 1_000_000


#: The simulated models, by model id (use them as ``openai/<id>`` in DSPy).
SIMULATED_MODELS: Final[Mapping[str, SimulatedModelPrice]] = {
    "sim-qa-small": SimulatedModelPrice(
        input_per_million=0.15,
        output_per_million=0.60,
        accuracy_without_demos=0.55,
        accuracy_with_demos=0.90,
    ),
    "sim-qa-large": SimulatedModelPrice(
        input_per_million=2.50,
        output_per_million=10.00,
        accuracy_without_demos=0.80,
        accuracy_with_demos=0.975,
    ),
}

#: A question containing this token makes the server answer HTTP 500.
FAIL_TOKEN: Final = "[[fail]]"
#: A question containing this token makes the server wait 0.2 s first.
SLOW_TOKEN: Final = "[[slow]]"
_SLOW_SECONDS: Final = 0.2
_GENERIC_ANSWER: Final = "unknown"
_OWNER: Final = "dspy-ledger-simulation"

# --------------------------------------------------------------------------
# The task: (question, correct answer, plausible wrong answer).
# --------------------------------------------------------------------------

_CAPITALS: Final[tuple[tuple[str, str, str], ...]] = (
    ("Australia", "Canberra", "Sydney"),
    ("Canada", "Ottawa", "Toronto"),
    ("Turkey", "Ankara", "Istanbul"),
    ("Brazil", "Brasilia", "Salvador"),
    ("Switzerland", "Bern", "Zurich"),
    ("New Zealand", "Wellington", "Auckland"),
    ("Morocco", "Rabat", "Casablanca"),
    ("Nigeria", "Abuja", "Lagos"),
    ("Vietnam", "Hanoi", "Saigon"),
    ("Pakistan", "Islamabad", "Karachi"),
    ("Myanmar", "Naypyidaw", "Yangon"),
    ("Kazakhstan", "Astana", "Almaty"),
    ("South Africa", "Pretoria", "Johannesburg"),
    ("Ecuador", "Quito", "Guayaquil"),
    ("Japan", "Tokyo", "Kyoto"),
    ("Italy", "Rome", "Milan"),
    ("Germany", "Berlin", "Bonn"),
    ("Spain", "Madrid", "Barcelona"),
    ("Egypt", "Cairo", "Alexandria"),
    ("Norway", "Oslo", "Bergen"),
)

_ARITHMETIC: Final[tuple[tuple[int, str, int], ...]] = (
    (17, "+", 25),
    (38, "+", 47),
    (64, "+", 29),
    (125, "+", 75),
    (91, "-", 46),
    (100, "-", 37),
    (83, "-", 58),
    (9, "*", 7),
    (12, "*", 12),
    (6, "*", 13),
    (56, "/", 8),
    (144, "/", 9),
)

_TRIVIA: Final[tuple[tuple[str, str, str], ...]] = (
    ("What is the chemical symbol for gold?", "Au", "Ag"),
    ("What is the chemical symbol for sodium?", "Na", "So"),
    ("What is the chemical symbol for iron?", "Fe", "Ir"),
    ("What is the chemical symbol for potassium?", "K", "P"),
    ("How many legs does a spider have?", "8", "6"),
    ("Which planet is known as the Red Planet?", "Mars", "Jupiter"),
    ("Which planet is the largest in the Solar System?", "Jupiter", "Saturn"),
    ("What is the largest ocean on Earth?", "Pacific", "Atlantic"),
)


def _arithmetic_row(left: int, op: str, right: int) -> tuple[str, str, str]:
    symbol = {"+": "+", "-": "-", "*": "times", "/": "divided by"}[op]
    value = {"+": left + right, "-": left - right, "*": left * right, "/": left // right}[op]
    # A plausible slip: off by one for sums/differences/quotients, by ten for products.
    wrong = value + (10 if op == "*" else 1)
    return f"What is {left} {symbol} {right}?", str(value), str(wrong)


def _build_table() -> tuple[tuple[str, str, str], ...]:
    rows = [
        (f"What is the capital of {country}?", right, wrong) for country, right, wrong in _CAPITALS
    ]
    rows += [_arithmetic_row(*row) for row in _ARITHMETIC]
    rows += list(_TRIVIA)
    return tuple(rows)


_TABLE: Final = _build_table()


def _normalize(question: str) -> str:
    return " ".join(question.lower().split()).rstrip("?. ")


def _difficulty_ranks() -> dict[str, float]:
    """Rank each known question by a salted hash: rank / N is its difficulty."""

    def digest(question: str) -> str:
        return hashlib.sha256(f"dspy-ledger-sim:{_normalize(question)}".encode()).hexdigest()

    ordered = sorted(_TABLE, key=lambda row: digest(row[0]))
    return {_normalize(row[0]): index / len(ordered) for index, row in enumerate(ordered)}


_KNOWN: Final[dict[str, tuple[str, str]]] = {
    _normalize(q): (right, wrong) for q, right, wrong in _TABLE
}
_DIFFICULTY: Final = _difficulty_ranks()


def demo_examples() -> list[dict[str, str]]:
    """Return the simulated task: 40 ``{"question": ..., "answer": ...}`` dicts.

    The list is fixed and self-contained (20 capitals, 12 arithmetic, 8
    trivia questions, one-word answers), in the same order on every call.
    Each call returns fresh dicts the caller may mutate.
    """
    return [{"question": question, "answer": answer} for question, answer, _ in _TABLE]


def simulated_answer(model: str, question: str, *, with_demos: bool) -> str:
    """Return the answer the simulated ``model`` gives to ``question``.

    This is exactly what the server puts in the ``answer`` field, so tests
    and demos can predict it without an HTTP round trip.

    Args:
        model: A key of ``SIMULATED_MODELS``.
        question: The question text (surrounding whitespace and a trailing
            ``?`` are ignored; fault-injection tokens are removed).
        with_demos: Whether the prompt carries few-shot demonstrations.

    Returns:
        The correct answer, a fixed plausible wrong answer, or ``"unknown"``
        for a question outside ``demo_examples()``.

    Raises:
        KeyError: ``model`` is not a simulated model.
    """
    price = SIMULATED_MODELS[model]
    key = _normalize(question.replace(FAIL_TOKEN, "").replace(SLOW_TOKEN, ""))
    known = _KNOWN.get(key)
    if known is None:
        return _GENERIC_ANSWER
    accuracy = price.accuracy_with_demos if with_demos else price.accuracy_without_demos
    right, wrong = known
    return right if _DIFFICULTY[key] < accuracy - 1e-9 else wrong


def expected_cost(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """Return the USD cost of a simulated call at ``SIMULATED_MODELS`` prices.

    Args:
        model: A simulated model id, with or without an ``openai/`` prefix.
        prompt_tokens: The reply's ``usage.prompt_tokens``.
        completion_tokens: The reply's ``usage.completion_tokens``.
    """
    price = SIMULATED_MODELS[model.split("/", 1)[-1]]
    return (
        prompt_tokens * price.input_cost_per_token + completion_tokens * price.output_cost_per_token
    )


# --------------------------------------------------------------------------
# Price registration (LiteLLM and DSPy's native price table).
# --------------------------------------------------------------------------

_registration_lock = threading.Lock()
_registered_in: set[str] = set()


def _price_entry(price: SimulatedModelPrice) -> dict[str, Any]:
    return {
        "input_cost_per_token": price.input_cost_per_token,
        "output_cost_per_token": price.output_cost_per_token,
        # The server never reports cached tokens; stating the rates keeps
        # LiteLLM from warning that they default to zero.
        "cache_read_input_token_cost": price.input_cost_per_token,
        "cache_creation_input_token_cost": price.input_cost_per_token,
        "litellm_provider": "openai",
        "mode": "chat",
        "max_input_tokens": 128_000,
        "max_output_tokens": 16_384,
        "max_tokens": 16_384,
    }


def _register_with_dspy() -> None:
    # DSPy 3.4's native engine prices from the map behind
    # dspy.clients.model_metadata (a copy of LiteLLM's price map, loaded once
    # per process; there is no public API to extend it). Entries are looked
    # up as "<litellm namespace>/<wire model>", here "openai/sim-qa-small".
    metadata = importlib.import_module("dspy.clients.model_metadata")
    table = cast("dict[str, Any]", metadata._load())
    for model, price in SIMULATED_MODELS.items():
        key = f"openai/{model}"
        entry = _price_entry(price)
        if table.get(key) != entry:
            table[key] = entry


def _register_with_litellm() -> None:
    litellm = importlib.import_module("litellm")
    entries = {f"openai/{model}": _price_entry(price) for model, price in SIMULATED_MODELS.items()}
    litellm.register_model(entries)


def register_simulated_prices(*, include_litellm: bool = True) -> None:
    """Register the simulated models' prices so DSPy reports a real cost.

    Idempotent and thread-safe: the second and later calls do nothing.

    It records ``SIMULATED_MODELS`` prices (``input_cost_per_token``,
    ``output_cost_per_token``, ``litellm_provider="openai"``, ``mode="chat"``)

    * in DSPy's native price table (``dspy.clients.model_metadata``), which
      DSPy 3.4's default engine uses for ``dspy.LM("openai/sim-qa-*",
      api_base=..., api_key=...)``; this relies on a private DSPy module,
      since DSPy offers no public way to add prices;
    * with ``litellm.register_model(...)`` when ``include_litellm`` is true,
      used for ``dspy.LM(..., engine="litellm")`` and for calls that fall
      back to LiteLLM. Importing LiteLLM takes a few seconds the first time;
      pass ``include_litellm=False`` to skip it when only the native engine
      is used.

    Args:
        include_litellm: Also register with LiteLLM (imports it).
    """
    with _registration_lock:
        if "dspy" not in _registered_in:
            _register_with_dspy()
            _registered_in.add("dspy")
        if include_litellm and "litellm" not in _registered_in:
            _register_with_litellm()
            _registered_in.add("litellm")


# --------------------------------------------------------------------------
# Reading a DSPy prompt.
# --------------------------------------------------------------------------

# DSPy's note after a non-str output field, e.g. "(must be formatted as a
# valid Python int)" or "... Literal['yes', 'no'])", followed by ", then ...".
_TYPE_NOTE = r"(?: \(must be formatted as a valid Python (.+?)\)(?=, then |, and then |\.?\s*$))?"
_HEADER = re.compile(r"^\s*\[\[ ## (\w+) ## \]\]\s*$")
_CHAT_OUTPUTS = re.compile(r"`\[\[ ## (\w+) ## \]\]`" + _TYPE_NOTE)
_JSON_REQUEST = re.compile(r"Respond with a JSON object in the following order of fields: (.*)")
_JSON_FIELD = re.compile(r"`(\w+)`" + _TYPE_NOTE)
_SYSTEM_OUTPUT_LINE = re.compile(r"^\d+\. `(\w+)` \(([^)]*)\)")


@dataclass(frozen=True)
class _Prompt:
    """What the server understood from one chat-completions request."""

    question: str
    output_fields: tuple[tuple[str, str], ...]  # (name, python type name)
    json_mode: bool
    demos: tuple[tuple[str, str], ...]  # (user content, assistant content)
    text: str  # all message text, for token counting


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return ""


def _sections(text: str) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        match = _HEADER.match(line)
        if match:
            current = found.setdefault(match.group(1), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines).strip() for name, lines in found.items()}


def _strip_instructions(value: str) -> str:
    paragraphs = [p for p in value.split("\n\n") if not p.strip().startswith("Respond with ")]
    return "\n\n".join(paragraphs).strip()


def _question_of(text: str) -> str:
    sections = _sections(text)
    if not sections:
        return _strip_instructions(text)
    values = {name: _strip_instructions(value) for name, value in sections.items()}
    # Prefer a field holding a question the simulation knows, then one
    # named "question", then the last input field.
    known = [value for value in values.values() if _normalize(value) in _KNOWN]
    if known:
        return known[0]
    return values.get("question", list(values.values())[-1])


def _output_fields(system: str, last_user: str) -> tuple[tuple[tuple[str, str], ...], bool]:
    json_request = _JSON_REQUEST.search(last_user)
    if json_request:
        return tuple(
            (m.group(1), m.group(2) or "str") for m in _JSON_FIELD.finditer(json_request.group(1))
        ), True
    requested = tuple(
        (m.group(1), m.group(2) or "str")
        for m in _CHAT_OUTPUTS.finditer(last_user)
        if m.group(1) != "completed"
    )
    json_mode = "Outputs will be a JSON object" in system
    if requested:
        return requested, json_mode
    # Fall back to the system message's "Your output fields are:" list.
    fields: list[tuple[str, str]] = []
    _, marker, rest = system.partition("Your output fields are:")
    if marker:
        for line in rest.splitlines()[1:]:
            match = _SYSTEM_OUTPUT_LINE.match(line.strip())
            if match:
                fields.append((match.group(1), match.group(2)))
            elif (
                line.strip() and not line.startswith(" ") and not re.match(r"^\d+\.", line.strip())
            ):
                break
    return tuple(fields), json_mode


def _read_prompt(messages: list[Mapping[str, object]]) -> _Prompt:
    texts = [(str(m.get("role", "")), _content_text(m.get("content"))) for m in messages]
    system = "\n".join(text for role, text in texts if role in ("system", "developer"))
    users = [index for index, (role, _) in enumerate(texts) if role == "user"]
    last_user = texts[users[-1]][1] if users else ""
    demos: list[tuple[str, str]] = []
    for index, (role, text) in enumerate(texts):
        if role == "assistant":
            previous = texts[index - 1][1] if index > 0 and texts[index - 1][0] == "user" else ""
            demos.append((previous, text))
    fields, json_mode = _output_fields(system, last_user)
    return _Prompt(
        question=_question_of(last_user),
        output_fields=fields,
        json_mode=json_mode,
        demos=tuple(demos),
        text="\n".join(text for _, text in texts),
    )


def _count_tokens(text: str) -> int:
    """The simulation's token count: ceil(characters / 4), at least 1."""
    return max(1, math.ceil(len(text) / 4))


def _demo_answer(prompt: _Prompt) -> str | None:
    """If a demo asked this very question, the answer it showed."""
    wanted = _normalize(prompt.question)
    for user, assistant in prompt.demos:
        if _normalize(_question_of(user)) == wanted:
            shown = _sections(assistant).get("answer")
            if shown is None:
                try:
                    parsed = json.loads(assistant)
                except ValueError:
                    parsed = None
                if isinstance(parsed, dict) and isinstance(parsed.get("answer"), str):
                    shown = parsed["answer"]
            if shown:
                return shown
    return None


def _placeholder(type_name: str) -> object:
    base = type_name.strip().lower()
    if base.startswith("literal["):
        # The first allowed value, e.g. Literal['yes', 'no'] -> 'yes'.
        try:
            options = ast.literal_eval(f"[{type_name.strip()[len('literal[') : -1]}]")
        except (ValueError, SyntaxError):
            options = []
        if isinstance(options, list) and options:
            return cast("object", options[0])
    if base.startswith("int"):
        return 0
    if base.startswith("float"):
        return 0.0
    if base.startswith("bool"):
        return False
    if base.startswith(("list", "tuple", "set")):
        return []
    if base.startswith("dict"):
        return {}
    return "Simulated output."


def _reply_text(model: str, prompt: _Prompt) -> str:
    answer = _demo_answer(prompt) or simulated_answer(
        model, prompt.question, with_demos=bool(prompt.demos)
    )
    if not prompt.output_fields:
        return answer
    reasoning = (
        f"The simulated model {model} looked up the question"
        f"{' after reading the examples' if prompt.demos else ''} and answers {answer}."
    )
    values: dict[str, object] = {}
    for name, type_name in prompt.output_fields:
        if name == "answer":
            values[name] = answer
        elif name in ("reasoning", "rationale"):
            values[name] = reasoning
        else:
            values[name] = _placeholder(type_name)
    if prompt.json_mode:
        return json.dumps(values, ensure_ascii=False)
    blocks = [
        f"[[ ## {name} ## ]]\n{value if isinstance(value, str) else json.dumps(value)}"
        for name, value in values.items()
    ]
    return "\n\n".join([*blocks, "[[ ## completed ## ]]"])


# --------------------------------------------------------------------------
# The HTTP server.
# --------------------------------------------------------------------------


class _SimulatedError(Exception):
    def __init__(
        self, status: HTTPStatus, message: str, error_type: str, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": None,
                "code": self.code,
            }
        }


class _Handler(BaseHTTPRequestHandler):
    """Request handler; ``self.server`` is a ``_Server``."""

    server_version = "dspy-ledger-simulated-model/1.0"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: no request logging to stderr."""

    @property
    def _owner(self) -> SimulatedModelServer:
        return cast("_Server", self.server).owner

    def _send_json(self, status: HTTPStatus, payload: Mapping[str, object]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        """Serve ``GET /v1/models`` (and ``/v1/models/<id>``)."""
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/v1/models":
            self._send_json(
                HTTPStatus.OK,
                {"object": "list", "data": [_model_card(m) for m in SIMULATED_MODELS]},
            )
        elif (
            path.startswith("/v1/models/") and path.removeprefix("/v1/models/") in SIMULATED_MODELS
        ):
            self._send_json(HTTPStatus.OK, _model_card(path.removeprefix("/v1/models/")))
        else:
            error = _SimulatedError(
                HTTPStatus.NOT_FOUND, f"Unknown path {path!r}.", "invalid_request_error"
            )
            self._send_json(error.status, error.body())

    def do_POST(self) -> None:
        """Serve ``POST /v1/chat/completions``."""
        path = self.path.split("?", 1)[0].rstrip("/")
        if path != "/v1/chat/completions":
            error = _SimulatedError(
                HTTPStatus.NOT_FOUND, f"Unknown path {path!r}.", "invalid_request_error"
            )
            self._send_json(error.status, error.body())
            return
        self._owner._note_request(self.headers.get("Authorization") is not None)
        try:
            body = self._read_body()
            self._complete(body)
        except _SimulatedError as error:
            self._owner._note_error()
            self._send_json(error.status, error.body())

    def _read_body(self) -> Mapping[str, object]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
            data = json.loads(self.rfile.read(length) or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise _SimulatedError(
                HTTPStatus.BAD_REQUEST, f"Invalid JSON body: {exc}", "invalid_request_error"
            ) from exc
        if not isinstance(data, dict):
            raise _SimulatedError(
                HTTPStatus.BAD_REQUEST, "The body must be a JSON object.", "invalid_request_error"
            )
        return cast("dict[str, object]", data)

    def _complete(self, body: Mapping[str, object]) -> None:
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or model.split("/", 1)[-1] not in SIMULATED_MODELS:
            raise _SimulatedError(
                HTTPStatus.NOT_FOUND,
                f"The model {model!r} does not exist on this simulated server; "
                f"use one of {sorted(SIMULATED_MODELS)}.",
                "invalid_request_error",
                "model_not_found",
            )
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) for m in messages)
        ):
            raise _SimulatedError(
                HTTPStatus.BAD_REQUEST,
                "'messages' must be a non-empty list of objects.",
                "invalid_request_error",
            )
        prompt = _read_prompt(cast("list[Mapping[str, object]]", messages))
        if FAIL_TOKEN in prompt.question:
            raise _SimulatedError(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                f"Simulated server error: the question contains {FAIL_TOKEN}.",
                "server_error",
                "simulated_failure",
            )
        if SLOW_TOKEN in prompt.question:
            time.sleep(_SLOW_SECONDS)
        content = _reply_text(model.split("/", 1)[-1], prompt)
        usage = {
            "prompt_tokens": _count_tokens(prompt.text),
            "completion_tokens": _count_tokens(content),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        completion_id = f"chatcmpl-sim-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if body.get("stream") is True:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            self._stream(completion_id, created, model, content, usage if include_usage else None)
            return
        self._send_json(
            HTTPStatus.OK,
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_simulated",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            },
        )

    def _stream(
        self,
        completion_id: str,
        created: int,
        model: str,
        content: str,
        usage: Mapping[str, int] | None,
    ) -> None:
        """Answer as OpenAI server-sent events; the connection closes at the end."""

        def chunk(delta: Mapping[str, object], finish: str | None) -> dict[str, object]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_simulated",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }

        events: list[Mapping[str, object]] = [chunk({"role": "assistant", "content": ""}, None)]
        events += [chunk({"content": piece}, None) for piece in _pieces(content)]
        events.append(chunk({}, "stop"))
        if usage is not None:
            events.append(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": dict(usage),
                }
            )
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def _pieces(content: str, size: int = 16) -> Iterator[str]:
    for start in range(0, len(content), size):
        yield content[start : start + size]


def _model_card(model: str) -> dict[str, object]:
    return {"id": model, "object": "model", "created": 0, "owned_by": _OWNER}


class _Server(ThreadingHTTPServer):
    """The stdlib server, with a pointer back to its ``SimulatedModelServer``."""

    daemon_threads = True

    def __init__(self, owner: SimulatedModelServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)


class SimulatedModelServer:
    """A SIMULATED OpenAI-compatible chat-completions server on loopback.

    Listens on ``127.0.0.1`` at an OS-chosen port, in a daemon thread. Serves
    ``POST /v1/chat/completions`` (plain JSON, or server-sent events when the
    request sets ``"stream": true``) and ``GET /v1/models``. Any
    ``Authorization: Bearer`` key is accepted; only whether the header was
    present is remembered, never the key.

    Use as a context manager::

        with SimulatedModelServer() as server:
            lm = dspy.LM("openai/sim-qa-small", api_base=server.api_base, api_key="sk-sim")
    """

    def __init__(self) -> None:
        """Create a stopped server; ``start()`` (or ``with``) binds the port."""
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._request_count = 0
        self._error_count = 0
        self._last_auth_present: bool | None = None

    def start(self) -> SimulatedModelServer:
        """Bind ``127.0.0.1:0`` and serve in a daemon thread. Returns ``self``.

        Raises:
            RuntimeError: The server is already running.
        """
        if self._server is not None:
            raise RuntimeError("The simulated model server is already running.")
        server = _Server(self)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"dspy-ledger-simulated-model:{server.server_address[1]}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving and release the port. Safe to call more than once."""
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> SimulatedModelServer:
        """Start the server (if not running) and return it."""
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server is currently serving."""
        return self._server is not None

    @property
    def port(self) -> int:
        """The bound TCP port.

        Raises:
            RuntimeError: The server is not running.
        """
        if self._server is None:
            raise RuntimeError("The simulated model server is not running; call start() first.")
        return int(self._server.server_address[1])

    @property
    def api_base(self) -> str:
        """The OpenAI-style base URL, ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def request_count(self) -> int:
        """Number of chat-completion requests received (including failed ones)."""
        with self._lock:
            return self._request_count

    @property
    def error_count(self) -> int:
        """Number of chat-completion requests answered with an error status."""
        with self._lock:
            return self._error_count

    @property
    def last_auth_header_present(self) -> bool | None:
        """Whether the last chat-completion request had an ``Authorization``
        header (``None`` before the first request). The key is never kept."""
        with self._lock:
            return self._last_auth_present

    def reset_counters(self) -> None:
        """Set ``request_count`` and ``error_count`` back to zero."""
        with self._lock:
            self._request_count = 0
            self._error_count = 0
            self._last_auth_present = None

    def _note_request(self, auth_present: bool) -> None:
        with self._lock:
            self._request_count += 1
            self._last_auth_present = auth_present

    def _note_error(self) -> None:
        with self._lock:
            self._error_count += 1

    def __repr__(self) -> str:
        """Show the address when running."""
        where = self.api_base if self._server is not None else "stopped"
        return f"SimulatedModelServer({where})"


if __name__ == "__main__":  # pragma: no cover - manual use
    with SimulatedModelServer() as _running:
        sys.stdout.write(f"SIMULATED model server at {_running.api_base} (Ctrl-C to stop)\n")
        sys.stdout.flush()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
